"""What a study leaves for people: trials.csv, study.md and plots; final.md; the cross-study table.

Every figure here is read from the study database and the trial/final run folders; nothing is
typed in. Tables are markdown, ready to paste.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import optuna
from optuna.trial import TrialState

from core.atomic import write_bytes, write_text
from experiments.tuning.study import MONITOR, budget_trials

METRICS = ("HitRate@10", "NDCG@10", "Coverage@10", "Surprisal@10")


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e-3 and value else f"{value:.{digits}f}"
    return str(value)


def _short(binding: str) -> str:
    return binding.split(".", 1)[1]


def trial_rows(study: optuna.Study) -> list[dict]:
    """One dict per trial of the study, every state (running and killed ones too)."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        a = t.user_attrs
        rows.append({"number": t.number, "state": t.state.name, "outcome": a.get("outcome"),
                     f"valid_{MONITOR}": t.value if t.state == TrialState.COMPLETE else
                     (a.get("valid") or {}).get(MONITOR),
                     **t.params, "epochs": a.get("epochs"), "epoch_time_s": a.get("epoch_time_s"),
                     "peak_memory_gib": a.get("peak_memory_gib"), "wall_s": a.get("wall_s"),
                     "stopped_by": a.get("stopped_by"), "oom_request_gib": a.get("oom_request_gib"),
                     "reason": a.get("reason"), "run": a.get("run")})
    return rows


def _markdown(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def study_markdown(study: optuna.Study, setup: dict) -> str:
    """study.md: the budget, what the trials ended as, the best setting, the out-of-memory list."""
    n = setup["n_trials"]
    budget = budget_trials(study, n)
    outcomes = [t.user_attrs.get("outcome") for t in study.get_trials(deepcopy=False)]
    count = {o: outcomes.count(o) for o in ("complete", "pruned", "oom", "error", "invalid", "duplicate")}
    killed = sum(1 for t in study.get_trials(deepcopy=False) if t.state == TrialState.FAIL and t.user_attrs.get("outcome") is None)
    spent = sum(t.user_attrs.get("wall_s", 0.0) for t in budget)
    params = [p["binding"] for p in setup["space"]]
    done = sorted((t for t in budget if t.state == TrialState.COMPLETE), key=lambda t: -t.value)
    lines = [f"# Study `{setup['study_name']}`: {', '.join(setup['gin'])}",
             "",
             f"Space `{setup['space_file']}`; {len(budget)} of {n} budget trials counted "
             f"({count['complete']} complete, {count['pruned']} pruned, {count['oom']} out of memory, "
             f"{count['error']} failed), {spent:.0f} device-seconds spent"
             + (f" (cap {setup['budget_s']:.0f})" if setup.get("budget_s") else "")
             + f"; {count['invalid']} invalid and {count['duplicate']} repeated settings skipped, "
             f"{killed} interrupted trials (killed "
             "workers: marked failed, not counted). Objective: validation NDCG@10 "
             f"(user's history {'masked' if setup.get('mask_history', True) else 'not masked'} in "
             "ranking); the test split is not read. Trial memory cap: "
             f"{_fmt(setup.get('gpu_memory_gib'))} GiB.",
             ""]
    if done:
        lines += ["## Best trials (validation)", "",
                  _markdown(["trial", f"valid {MONITOR}", *map(_short, params), "epochs", "epoch s", "peak GiB"],
                            [[t.number, t.value, *(t.params.get(p) for p in params), t.user_attrs.get("epochs"),
                              t.user_attrs.get("epoch_time_s"), t.user_attrs.get("peak_memory_gib")]
                             for t in done[:10]]), ""]
    ooms = [t for t in budget if t.user_attrs.get("outcome") == "oom"]
    if ooms:
        lines += [f"## Out of device memory ({len(ooms)} trials)", "",
                  _markdown(["trial", *map(_short, params), "allocation asked (GiB)"],
                            [[t.number, *(t.params.get(p) for p in params), t.user_attrs.get("oom_request_gib")]
                             for t in ooms]), ""]
    return "\n".join(lines)


def plots(study: optuna.Study, setup: dict, folder: Path) -> list[str]:
    """history.png, importance.png, cost.png into ``folder``; returns the names written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    budget = budget_trials(study, setup["n_trials"])
    done = [t for t in budget if t.state == TrialState.COMPLETE]
    if not done:
        return written
    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [t.number for t in done]
    ax.scatter(xs, [t.value for t in done], s=12, label="trial")
    best, run = [], float("-inf")
    for t in done:
        run = max(run, t.value)
        best.append(run)
    ax.step(xs, best, where="post", color="C3", label="best so far")
    ax.set(xlabel="trial", ylabel=f"validation {MONITOR}", title=f"{setup['study_name']}: optimization history")
    ax.legend()
    fig.tight_layout()
    _save(fig, folder / "history.png")
    written.append("history.png")
    if len(done) >= 4:
        try:
            importance = optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.PedAnovaImportanceEvaluator())
        except (RuntimeError, ValueError):  # too few distinct settings
            importance = {}
        if importance:
            fig, ax = plt.subplots(figsize=(6, 4))
            names = list(importance)[::-1]
            ax.barh([_short(n) for n in names], [importance[n] for n in names])
            ax.set(xlabel="PED-ANOVA importance", title=f"{setup['study_name']}: parameter importance")
            fig.tight_layout()
            _save(fig, folder / "importance.png")
            written.append("importance.png")
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, key, label in ((axes[0], "epoch_time_s", "epoch time (s)"), (axes[1], "peak_memory_gib", "peak memory (GiB)")):
        pts = [(t.user_attrs.get(key) or t.user_attrs.get("first_epoch_time_s"), t.value) for t in done]
        pts = [(x, y) for x, y in pts if x is not None]
        if pts:
            ax.scatter(*zip(*pts), s=12)
        ax.set(xlabel=label)
    axes[0].set(ylabel=f"validation {MONITOR}")
    fig.suptitle(f"{setup['study_name']}: quality vs cost per trial")
    fig.tight_layout()
    _save(fig, folder / "cost.png")
    written.append("cost.png")
    return written


def _save(fig, path: Path) -> None:
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    write_bytes(buf.getvalue(), path)


def write_summary(study: optuna.Study, setup: dict, out: Path) -> None:
    """trials.csv, study.md and the plots into ``out/summary`` (each file written atomically)."""
    import pandas as pd

    target = out / "summary"
    target.mkdir(parents=True, exist_ok=True)
    write_text(pd.DataFrame(trial_rows(study)).to_csv(index=False), target / "trials.csv")
    write_text(study_markdown(study, setup) + "\n", target / "study.md")
    plots(study, setup, target)


# --- the final step -------------------------------------------------------------------------


def _mean_std(values: list[float | None]) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def final_record(name: str, runs: list[dict]) -> dict:
    """Mean and sample std over seeds of the test metrics, epoch time and peak memory."""
    row = {"config": name, "loss": runs[0]["loss"], "seeds": [m["env"]["seed"] for m in runs]}
    for key in METRICS:
        row[key] = _mean_std([m["test"][key] for m in runs])
    row["epoch_time_s"] = _mean_std([m["epoch_time_s"] for m in runs])
    row["peak_memory_gib"] = _mean_std([m["peak_memory_gib"] for m in runs])
    row["epochs"] = _mean_std([m["epochs"] for m in runs])
    return row


def _pm(pair, digits: int = 4) -> str:
    mean, std = pair
    return "—" if mean is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def final_markdown(final: dict) -> str:
    """final.md: default vs tuned, test split, 3 seeds."""
    rows = [[r["config"], *(_pm(r[k]) for k in METRICS), _pm(r["peak_memory_gib"], 2),
             _pm(r["epoch_time_s"], 2), _pm(r["epochs"], 1)] for r in final["rows"]]
    setting = ", ".join(f"{_short(k)} {_fmt(v)}" for k, v in final["best_params"].items())
    return "\n".join([
        f"# {final['dataset']} / {final['loss']}: default vs tuned (test split, seeds {final['seeds']})", "",
        _markdown(["config", *METRICS, "peak GiB", "epoch s", "epochs"], rows), "",
        f"Tuned: trial {final['best_trial']} of {final.get('counted_trials', final['n_trials'])} counted "
        f"(budget {final['n_trials']}; validation {MONITOR} "
        f"{final['best_valid']:.4f}): {setting}. History masked in ranking: {final['mask_history']}. "
        f"Device: {final['device']}. Mean ± sample std over seeds.", ""])


def write_final(final: dict, out: Path) -> None:
    write_text(json.dumps(final, indent=2) + "\n", out / "final.json")
    write_text(final_markdown(final), out / "final.md")


def compare_markdown(finals: list[dict], ooms: dict[str, list[dict]]) -> str:
    """The cross-study table (one block per dataset: each loss's default and tuned rows with
    the seed's columns) and the out-of-memory comparison."""
    lines = []
    for dataset in dict.fromkeys(f["dataset"] for f in finals):
        rows = []
        for f in (f for f in finals if f["dataset"] == dataset):
            setting = ", ".join(f"{_short(k)} {_fmt(v)}" for k, v in f["best_params"].items())
            for row, what in zip(f["rows"], ("default config", f"trial {f['best_trial']}: {setting}")):
                rows.append([row.get("loss", f["loss"]), row["config"], *(_pm(row[k]) for k in METRICS),
                             _pm(row["peak_memory_gib"], 2), _pm(row["epoch_time_s"], 2), _pm(row["epochs"], 1),
                             what])
        lines += [f"## {dataset}", "",
                  _markdown(["loss", "config", *METRICS, "peak GiB", "epoch s", "epochs", "setting"], rows), ""]
    for study, trials in ooms.items():
        if trials:
            lines += [f"## Out of device memory in {study}", "",
                      _markdown(["trial", "setting", "allocation asked (GiB)", "ran in another study"],
                                [[t["number"], t["setting"], t["oom_request_gib"], t["ran_by"]] for t in trials]), ""]
    return "\n".join(lines)
