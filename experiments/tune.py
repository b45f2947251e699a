"""Hyperparameter studies (Optuna): python experiments/tune.py --gin G --space S --trials N --out DIR.

    python experiments/tune.py --gin gin/beauty5core_flash_ce.gin --space gin/tune/sasrec.gin \\
        --trials 100 --out runs/tune_beauty_flash [--workers 4] [--budget-s 3600] [--trial-s 300]
    python experiments/tune.py --status --out runs/tune_beauty_flash    # where it stands (any time)
    python experiments/tune.py --final --out runs/tune_beauty_flash     # best setting x 3 seeds, test
    python experiments/tune.py --compare runs/tune_beauty_* --out runs/tune_report

Search: TPE over the space file's ranges (``gin/tune/*.gin``), a median pruner on validation
NDCG@10 reported every epoch; every trial is an ordinary run folder ``DIR/trials/trial_NNNN``
(config.gin, metrics.json, ...) trained with ``train.test = False``: the test split is not
read until ``--final``. The study lives in a database: ``sqlite:///DIR/study.db`` unless
``--storage URL`` names another (any SQLAlchemy URL, e.g. PostgreSQL, so that workers on
several GPUs or machines share one study: start the same command on each, with
``CUDA_VISIBLE_DEVICES`` picking the GPU). ``--workers K`` runs K trials side by side on this
machine's GPU, each in a fresh process capped at ``--gpu-memory-gib`` (default: the card's
memory / K), so a trial's out-of-memory is a property of its setting (not of what an earlier
trial left allocated), recorded with the allocation that failed.

The same command after a crash or ``kill -9`` continues the same study: finished trials stay,
an interrupted one is marked failed (after its worker's heartbeat goes stale, 3 x
``--heartbeat-s``), never counted. The study stops at
``--trials`` counted trials (complete, pruned, out of memory, failed; invalid settings are
skipped with their reason and not counted) or when the trials' wall time reaches ``--budget-s``
GPU-seconds. Comparisons use the first ``--trials`` counted trials, so every loss gets the same
budget. DIR/summary/ holds trials.csv, study.md and plots after every call.

``--final`` retrains the best trial's setting and the study's default config (the gin files as
given) with ``--seeds`` (default 0,1,2) and writes DIR/final.json and DIR/final.md (test split,
mean ± std). ``--compare`` tabulates several finished studies (default → tuned per dataset and
loss) and lists the settings each loss could not run for memory. Exit status: 0 done, 1 a
failure (one ``error:`` line), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import this checkout's code, installed or not
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.paths import REPO_ROOT  # noqa: E402  (torch-free)

CHANGEABLE = ("n_trials", "budget_s", "workers")  # what a continued study may change
MORE = 75  # a worker process's exit status: it ran its trial and the study wants more


class TuneError(RuntimeError):
    """A refusal or failure: printed as one ``error:`` line."""


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gin", action="append", default=[], help="the study's gin file(s): dataset, loss, base")
    p.add_argument("--gin_bindings", action="append", default=[], help="bindings for every trial (repeatable)")
    p.add_argument("--space", help="search space gin file (gin/tune/*.gin)")
    p.add_argument("--trials", type=int, default=100, help="counted trials in the study (default 100)")
    p.add_argument("--out", required=True, help="the study folder (database, trials, summary)")
    p.add_argument("--storage", help="SQLAlchemy URL of the study database (default sqlite:///OUT/study.db)")
    p.add_argument("--study-name", default="tune", help="the study's name in the database")
    p.add_argument("--workers", type=int, default=1, help="trial processes side by side on this machine")
    p.add_argument("--budget-s", type=float, help="GPU-seconds for the whole study (sum of trial wall times)")
    p.add_argument("--trial-s", type=float, help="a trial stops training after this many seconds")
    p.add_argument("--gpu-memory-gib", type=float, help="device memory cap per trial process "
                   "(default: the card's memory / --workers; CUDA only)")
    p.add_argument("--pruner", choices=("median", "hyperband", "none"), default="median")
    p.add_argument("--seed", type=int, default=0, help="train.seed of every trial and the sampler's seed")
    p.add_argument("--heartbeat-s", type=int, default=30, help="worker heartbeat; dead after 3 missed")
    p.add_argument("--status", action="store_true", help="rewrite DIR/summary and print study.md")
    p.add_argument("--final", action="store_true", help="retrain the best setting and the default with --seeds")
    p.add_argument("--seeds", default="0,1,2", help="--final: comma-separated seeds (default 0,1,2)")
    p.add_argument("--compare", nargs="+", metavar="STUDY_DIR", help="tabulate these finished studies into --out")
    p.add_argument("--in-process", action="store_true",
                   help="run every trial in this one process (debugging, tests): faster to start, "
                        "but device memory a trial leaves behind counts against the next")
    p.add_argument("--worker", type=int, help=argparse.SUPPRESS)  # a spawned worker's index
    args = p.parse_args(argv)
    if not (args.final or args.compare or args.status) and (not args.gin or not args.space):
        p.error("a search needs --gin FILE and --space FILE")
    if args.trials < 1 or args.workers < 1 or args.heartbeat_s < 1:
        p.error("--trials, --workers and --heartbeat-s must be >= 1")
    if args.gpu_memory_gib is not None and not 0 < args.gpu_memory_gib < float("inf"):
        p.error(f"--gpu-memory-gib must be a number of GiB > 0, got {args.gpu_memory_gib}")
    try:
        args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        p.error(f"--seeds must be comma-separated integers, got {args.seeds!r}")
    return args


# --- the study and its setup ------------------------------------------------------------------


def _storage_url(args) -> str:
    return args.storage or f"sqlite:///{(Path(args.out) / 'study.db').resolve()}"


def _setup(args, space) -> dict:
    """What defines the study: recorded in the database, checked when the command is run again."""
    return {"study_name": args.study_name, "gin": args.gin, "gin_bindings": args.gin_bindings,
            "space_file": args.space,
            "space": [{"binding": p.binding, "kind": p.kind, "values": list(p.values)} for p in space.params],
            "fixed": space.fixed, "seed": args.seed, "trial_s": args.trial_s, "pruner": args.pruner,
            "gpu_memory_gib": args.gpu_memory_gib or _default_memory_cap(args.workers),
            "n_trials": args.trials, "budget_s": args.budget_s, "workers": args.workers}


def _default_memory_cap(workers: int) -> float | None:
    import torch

    if not torch.cuda.is_available():
        return None
    return round(torch.cuda.get_device_properties(0).total_memory / 2**30 / workers, 2)


def _open_study(args, setup: dict | None, *, create: bool):
    """The study in the database; a new one records ``setup``, an old one must match it."""
    import optuna

    from experiments.tuning.study import storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    store = storage(_storage_url(args), args.heartbeat_s)
    sizes = {s.study_name: s.n_trials for s in optuna.get_all_study_summaries(store, include_best_trial=False)}
    if args.study_name not in sizes and not create:
        raise TuneError(f"no study {args.study_name!r} in {_storage_url(args)}: run the search first")
    study = optuna.create_study(study_name=args.study_name, storage=store, direction="maximize",
                                load_if_exists=True, sampler=_sampler(args, sizes.get(args.study_name, 0)),
                                pruner=_pruner(args))
    saved = study.user_attrs.get("setup")
    if setup is None:
        return study, saved
    if saved is None:
        study.set_user_attr("setup", setup)
        return study, setup
    for key in setup:
        if key not in CHANGEABLE and saved.get(key) != setup[key] and not (
                key == "gpu_memory_gib" and args.gpu_memory_gib is None):
            raise TuneError(f"study {args.study_name!r} was started with {key} = {saved.get(key)!r}, not "
                            f"{setup[key]!r}: rerun the same command to continue it, or use another --out")
    merged = {**saved, **{k: setup[k] for k in CHANGEABLE}}
    study.set_user_attr("setup", merged)
    return study, merged


def _sampler(args, n_trials: int):
    """TPE seeded by the study's seed and its size when this process joined: each trial runs in
    a fresh process, and one seed per worker would draw the same random start-up setting in
    every one of them (call 2 repeated settings that way)."""
    import optuna

    seed = (args.seed * 1_000_003 + n_trials * 1_009 + (args.worker or 0)) % 2**32
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True, n_startup_trials=10)


def _pruner(args):
    import optuna

    if args.pruner == "median":  # prune below the median of earlier trials at the same epoch
        return optuna.pruners.MedianPruner(n_startup_trials=8, n_warmup_steps=5)
    if args.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=3, max_resource=100)
    return optuna.pruners.NopPruner()


def _trainer(setup: dict, out: Path):
    from experiments.tuning.space import search_space
    from experiments.tuning.study import Trainer

    space = search_space(params={p["binding"]: (p["kind"], p["values"]) if p["kind"] == "choice"
                                 else (p["kind"], *p["values"]) for p in setup["space"]},
                         fixed=setup["fixed"])
    return Trainer(setup["gin"], setup["gin_bindings"], space, out, setup["seed"], setup["trial_s"])


# --- search ----------------------------------------------------------------------------------


def _search(args) -> int:
    from core.atomic import unwritable
    from experiments.tuning.space import load_space
    from experiments.tuning.summary import write_summary

    out = Path(args.out)
    missing = [f for f in [*args.gin, args.space] if not Path(f).exists() and not (REPO_ROOT / f).exists()]
    if missing:
        raise TuneError(f"file not found: {', '.join(missing)}")
    problem = unwritable(out)
    if problem:
        raise TuneError(f"cannot make study folder {out}: {problem}")
    space = load_space(args.space, REPO_ROOT)  # every refusal before the folder is made
    mask_history, defaults = _check_config(args.gin, args.gin_bindings, space.fixed,
                                           query=[p.binding for p in space.params])
    out.mkdir(parents=True, exist_ok=True)
    study, setup = _open_study(args, {**_setup(args, space), "mask_history": mask_history},
                               create=args.worker is None)
    if args.worker is None and not study.trials:
        print(_enqueue_default(study, space, defaults), flush=True)
    trainer = _trainer(setup, out)
    if args.worker is None:
        data = trainer.load_data()  # prepared once here, before workers race to write the cache
        print(f"study {args.study_name} in {_storage_url(args)}: {data.name} ({data.data.n_users} users, "
              f"{data.data.n_items} items), {args.trials} trials, {args.workers} worker(s), memory cap "
              f"{setup['gpu_memory_gib']} GiB per trial", flush=True)
    if args.in_process or args.worker is not None:
        status = _work(args, study, trainer, setup)
    else:
        status = _spawn_workers(args)
    if args.worker is None:
        write_summary(study, setup, out)
        print((out / "summary" / "study.md").read_text())
    return status


def _enqueue_default(study, space, defaults: dict) -> str:
    """A new study's first trial is the config's own setting where the space holds it, so the
    tuned setting is never below the default on validation (ML-100K's sampled study, without
    it, ended below the default and --final retrained its best anyway). Two commands that
    create one shared study at the same instant may both enqueue it: the second copy is a
    repeated setting, answered from the first and not counted."""
    outside = [f"{p.binding} = {defaults.get(p.binding, 'unset')!r}" for p in space.params
               if not p.holds(defaults.get(p.binding))]
    if outside:
        return f"the default config is outside the space ({', '.join(outside)}): not tried first"
    study.enqueue_trial({p.binding: defaults[p.binding] for p in space.params})
    return "trial 0: the default config"


def _check_config(gin_files: list[str], bindings: list[str], fixed: dict, query=()) -> tuple[bool, dict]:
    """Refuses a study whose gin files or bindings do not parse, before any trial; returns
    whether evaluation masks the user's history (``train.mask_history``) and the configured
    value of each binding in ``query`` that the config sets (the default setting)."""
    import gin

    import core.dataset_config  # noqa: F401  (dataset(), train() and the losses as gin knows them)
    import core.training.flat  # noqa: F401
    from core.env import usable_device
    from core.gin_search import add_root
    from experiments.tuning.space import as_bindings

    add_root(REPO_ROOT)
    gin.clear_config()
    try:
        gin.parse_config_files_and_bindings(gin_files, [*as_bindings(fixed), *bindings], skip_unknown=False)
        usable_device(gin.query_parameter("train.device"), "train.device")  # before any trial
        values = {}
        for binding in query:
            with contextlib.suppress(ValueError):
                values[binding] = gin.query_parameter(binding)
        return bool(gin.query_parameter("train.mask_history")), values
    except (ValueError, OSError, SyntaxError, KeyError, TypeError) as err:
        raise TuneError(f"bad gin config: {' '.join(str(err).split())}") from None
    finally:
        gin.clear_config()


def _work(args, study, trainer, setup: dict) -> int:
    import torch

    from experiments.tuning.study import work

    from core.env import cap_gpu_memory

    if setup["gpu_memory_gib"] and torch.cuda.is_available():
        cap_gpu_memory(torch.device("cuda", torch.cuda.current_device()), setup["gpu_memory_gib"], "--gpu-memory-gib")
    if args.worker is not None:  # SIGTERM from the parent: the running trial ends as FAIL
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    why, more = work(study, trainer, n_trials=setup["n_trials"], budget_s=setup["budget_s"],
                     heartbeat_s=args.heartbeat_s, on_trial=_print_trial,
                     max_runs=None if args.in_process else 1)
    if not more:
        print(f"worker {args.worker or 0}: stopped: {why}", flush=True)
    return MORE if more else 0


def _print_trial(trial) -> None:
    a = trial.user_attrs
    value = "" if trial.value is None else f" valid NDCG@10 {trial.value:.4f}"
    params = " ".join(f"{k.split('.', 1)[1]}={v:.3g}" if isinstance(v, float) else f"{k.split('.', 1)[1]}={v}"
                      for k, v in trial.params.items())
    cost = f" {a['wall_s']:.0f} s" if a.get("wall_s") is not None else ""
    peak = f", peak {a['peak_memory_gib']:.2f} GiB" if a.get("peak_memory_gib") else ""
    why = f" ({a['reason']})" if a.get("reason") else ""
    print(f"trial {trial.number}: {a.get('outcome', trial.state.name.lower())}{value}{cost}{peak}{why} | {params}",
          flush=True)


def _spawn_workers(args) -> int:
    """K worker slots; each runs one trial per fresh process (``--worker i``), so nothing a trial
    left on the device (CUDA graphs' memory pools, an allocator's cache, a broken context) can
    reach the next trial and make its out-of-memory a property of history rather than of its
    setting. A slot ends when its process says the study needs no more trials; the processes
    die with this one (PDEATHSIG)."""
    argv = [sys.executable, str(Path(__file__).resolve()), *(sys.argv[1:] if args._argv is None else args._argv)]
    start = lambda i: subprocess.Popen([*argv, "--worker", str(i)], preexec_fn=_die_with_parent)  # noqa: E731
    procs: dict[int, subprocess.Popen] = {i: start(i) for i in range(args.workers)}

    def stop(signum, _frame):
        for proc in procs.values():
            proc.terminate()
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    failed = []
    while procs:
        time.sleep(0.5)
        for i, proc in list(procs.items()):
            code = proc.poll()
            if code is None:
                continue
            if code == MORE:
                procs[i] = start(i)
            else:
                del procs[i]
                if code:
                    failed.append(code)
    if failed:
        print(f"error: worker exit codes {failed} (each printed its own error line)", file=sys.stderr)
        return 1
    return 0


def _die_with_parent() -> None:
    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG (Linux)
    except OSError:
        pass


# --- final and compare -------------------------------------------------------------------------


def _final(args) -> int:
    from experiments.tuning.space import as_bindings
    from experiments.tuning.study import best_trial, budget_trials
    from experiments.tuning.summary import METRICS, final_record, write_final, write_summary

    out = Path(args.out)
    study, setup = _open_study(args, None, create=False)
    best = best_trial(study, setup["n_trials"])
    if best is None:
        raise TuneError(f"study {args.study_name!r} has no complete trial to retrain")
    trainer = _trainer(setup, out)
    _check_config(setup["gin"], setup["gin_bindings"], setup["fixed"])  # still parses
    runs = {"default": [], "tuned": []}
    for seed in args.seeds:
        for name, bindings in (("tuned", as_bindings(best.params)), ("default", [])):
            path = out / "final" / f"{name}_s{seed}"
            if (path / "metrics.json").exists():
                metrics = json.loads((path / "metrics.json").read_text())
            else:
                print(f"final: {name} seed {seed} -> {path}", flush=True)
                metrics = trainer.train(path, [*bindings, f"train.seed = {seed}", "train.show_progress = False"],
                                        fixed=name == "tuned")
            runs[name].append(metrics)
    first = runs["tuned"][0]
    final = {"dataset": first["dataset"]["name"], "loss": first["loss"], "seeds": args.seeds,
             "best_trial": best.number, "best_valid": best.value, "best_params": best.params,
             "n_trials": setup["n_trials"], "counted_trials": len(budget_trials(study, setup["n_trials"])),
             "mask_history": setup["mask_history"],
             "device": first["env"]["device"], "metrics": list(METRICS),
             "rows": [final_record("default", runs["default"]), final_record("tuned", runs["tuned"])]}
    write_final(final, out)
    write_summary(study, setup, out)
    print((out / "final.md").read_text())
    return 0


def _status(args) -> int:
    from experiments.tuning.summary import write_summary

    study, setup = _open_study(args, None, create=False)
    write_summary(study, setup, Path(args.out))
    print((Path(args.out) / "summary" / "study.md").read_text())
    return 0


def _compare(args) -> int:
    import optuna

    from core.atomic import write_text
    from experiments.tuning.study import budget_trials, storage
    from experiments.tuning.summary import compare_markdown

    finals, trials = [], []
    for folder in map(Path, args.compare):
        if not (folder / "final.json").exists():
            raise TuneError(f"{folder} has no final.json: run tune.py --final --out {folder} first")
        final = json.loads((folder / "final.json").read_text())
        finals.append(final)
        store = storage(f"sqlite:///{(folder / 'study.db').resolve()}", args.heartbeat_s)
        study = optuna.load_study(study_name=args.study_name, storage=store)
        n = study.user_attrs["setup"]["n_trials"]
        trials += [{"study": folder.name, "dataset": final["dataset"], "loss": final["loss"], "trial": t}
                   for t in budget_trials(study, n)]
    ooms = {study: _oom_rows(study, trials) for study in dict.fromkeys(t["study"] for t in trials)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = compare_markdown(finals, ooms)
    write_text(text, out / "tuning.md")
    print(text)
    return 0


def _oom_rows(study: str, trials: list[dict]) -> list[dict]:
    """``study``'s out-of-memory trials, each with the trials of the other studies on the same
    data that ran a setting at least as large (batch size, max_len and dim all >=)."""
    size = ("train.batch_size", "train.max_len", "SASRec.dim")
    rows = []
    for row in (r for r in trials if r["study"] == study and r["trial"].user_attrs.get("outcome") == "oom"):
        t = row["trial"]
        ran = [r for r in trials if r["study"] != study and r["dataset"] == row["dataset"]
               and r["trial"].user_attrs.get("outcome") in ("complete", "pruned")
               and all(r["trial"].params.get(k, 0) >= t.params.get(k, 0) for k in size)]
        ran_by = ", ".join(f"{r['study']} #{r['trial'].number} ({r['trial'].user_attrs.get('peak_memory_gib') or 0:.1f} GiB)"
                           for r in ran[:3]) or "—"
        rows.append({"study": row["study"], "number": t.number, "oom_request_gib": t.user_attrs.get("oom_request_gib"),
                     "setting": ", ".join(f"{k.split('.', 1)[1]} {t.params.get(k)}" for k in size), "ran_by": ran_by})
    return rows


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)  # --help and argument errors answer before torch is imported
    args._argv = argv
    from experiments.tuning.space import SpaceError
    from experiments.tuning.study import StudyStopped

    try:
        if args.compare:
            return _compare(args)
        if args.status:
            return _status(args)
        return _final(args) if args.final else _search(args)
    except (TuneError, SpaceError, StudyStopped) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2 if isinstance(err, SpaceError) else 1
    except KeyboardInterrupt:
        print("error: interrupted; run the same command again to continue the study", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
