"""experiments/report.py (and its report_* modules) on fake run folders: table values,
grouping, plots, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from experiments import report, report_markdown, report_runs, report_stats

ROOT = Path(__file__).resolve().parents[1]
METRICS = report_runs.METRICS
POP = {"HitRate@10": 0.01, "NDCG@10": 0.005, "MRR@10": 0.003, "Coverage@10": 0.001, "Surprisal@10": 0.05}


def metric_dict(value: float) -> dict:
    return {m: value for m in METRICS}


def fake_run(folder: Path, *, dataset="beauty", loss="ce", seed=0, test=0.1, memory=1.5,
             epoch_time=10.0, device="NVIDIA H100 80GB HBM3", pop=POP, epochs=3,
             settings: dict | None = None) -> Path:
    """Writes a run folder in the schema of common.md (metrics.json, history.jsonl); metrics.json's
    "settings" hold the loss, the seed and optimizer.lr = 0.001, updated by ``settings`` (dotted
    names: ``{"optimizer.lr": 0.01}``); ``settings=False`` writes none (an older metrics.json)."""
    folder.mkdir(parents=True)
    record = {
        "dataset": {"name": dataset, "n_users": 100, "n_items": 50, "n_interactions": 1000},
        "loss": loss,
        "valid": metric_dict(test),
        "test": metric_dict(test),
        "popularity_test": pop,
        "epoch_time_s": epoch_time,
        "first_epoch_time_s": epoch_time * 3,
        "peak_memory_gib": memory,
        "epochs": epochs,
        "best_epoch": epochs - 1,
        "env": {"device": device, "torch": "2.5.1", "triton": "3.1.0",
                "cut_cross_entropy": "25.1.1", "dtype": "bfloat16", "seed": seed},
    }
    if settings is not False:
        record["settings"] = {"loss": {"name": loss}, "optimizer": {"lr": 0.001, "batch_size": 128},
                              "seed": seed}
        for name, value in (settings or {}).items():
            *groups, key = name.split(".")
            inner = record["settings"]
            for group in groups:
                inner = inner.setdefault(group, {})
            inner[key] = value
    (folder / "metrics.json").write_text(json.dumps(record))
    lines = [json.dumps({"epoch": e, "train_loss": 5.0 - e, "epoch_time_s": epoch_time,
                         "valid": metric_dict(test * (e + 1) / epochs)}) for e in range(epochs)]
    (folder / "history.jsonl").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture
def runs_root(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    fake_run(root / "beauty" / "ce_s0", loss="ce", seed=0, test=0.03, memory=2.0, epoch_time=10.0)
    fake_run(root / "beauty" / "ce_s1", loss="ce", seed=1, test=0.05, memory=2.0, epoch_time=12.0)
    fake_run(root / "beauty" / "cce_s0", loss="cce", seed=0, test=0.04, memory=0.5, epoch_time=8.0)
    fake_run(root / "ml100k_ce", dataset="ml100k", loss="ce", test=0.2, memory=None,
             epoch_time=1.0, device="cpu", pop=metric_dict(0.07))
    return root


def table_rows(text: str) -> dict[tuple[str, str], list[str]]:
    """(dataset, loss) -> cells of the main table (the first table; later sections have their own)."""
    rows, seen_table = {}, False
    for line in text.splitlines():
        if seen_table and not line.startswith("|"):
            break
        if line.startswith("|"):
            seen_table = True
        if line.startswith("| ") and not line.startswith("| Dataset"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[(cells[0], cells[1])] = cells[2:]
    return rows


def test_table_values_means_and_stds(runs_root: Path, tmp_path: Path, capsys):
    out = tmp_path / "report"
    assert report.main([str(runs_root), "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert capsys.readouterr().out == text  # the table is printed too
    header = text.splitlines()[0]
    assert "NVIDIA H100 80GB HBM3" in header and "cpu" in header and "25.1.1" in header
    assert "| Dataset | Loss | HitRate@10 | NDCG@10 | MRR@10 | Coverage@10 | Surprisal@10 " \
           "| Max Memory (GiB) | Epoch (s) | n seeds |" in text

    rows = table_rows(text)
    assert list(rows) == [("beauty", "ce"), ("beauty", "cce"), ("beauty", "popularity"),
                          ("ml100k", "ce"), ("ml100k", "popularity")]
    # ce on beauty: 0.03 and 0.05 -> mean 0.04, sample std 0.0141; epoch 10 and 12 -> 11 ± 1.41
    assert rows[("beauty", "ce")] == ["0.0400 ± 0.0141"] * 5 + ["2.00 ± 0.00", "11.00 ± 1.41", "2"]
    assert rows[("beauty", "cce")] == ["0.0400"] * 5 + ["0.50", "8.00", "1"]
    assert rows[("beauty", "popularity")] == [
        "0.0100", "0.0050", "0.0030", "0.0010", "0.0500", "—", "—", "—"
    ]
    assert rows[("ml100k", "ce")][5:] == ["—", "1.00", "1"]  # CPU run: no GPU memory
    assert rows[("ml100k", "popularity")][0] == "0.0700"


def test_pngs_are_written(runs_root: Path, tmp_path: Path):
    out = tmp_path / "report"
    assert report.main([str(runs_root / "beauty"), str(runs_root / "ml100k_ce"), "--out", str(out)]) == 0
    for name in ("valid_ndcg.png", "memory.png", "epoch_time.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000, name
    names = sorted(p.name for p in out.iterdir())
    assert names == ["epoch_time.png", "memory.png", "report.md", "valid_ndcg.png"]


def test_validation_curve_read_from_history(runs_root: Path):
    run = report_runs.read_run(runs_root / "beauty" / "ce_s1" / "metrics.json")
    assert run.seed == 1
    epochs, ndcg = zip(*run.valid_ndcg)
    assert epochs == (0, 1, 2)
    assert ndcg == pytest.approx([0.05 / 3, 0.1 / 3, 0.05])


def test_popularity_spread_shows_when_runs_disagree(tmp_path: Path):
    fake_run(tmp_path / "a", pop=metric_dict(0.1))
    fake_run(tmp_path / "b", seed=1, pop=metric_dict(0.3))
    rows = report_stats.summarize([report_runs.read_run(p) for p in report_runs.find_metrics_files([tmp_path])])
    popularity = next(r for r in rows if r["loss"] == "popularity")
    assert popularity["HitRate@10"] == pytest.approx((0.2, 0.1414213562))


def test_cpu_only_runs_skip_memory_plot(tmp_path: Path):
    fake_run(tmp_path / "runs" / "a", memory=None)
    out = tmp_path / "report"
    assert report.main([str(tmp_path / "runs"), "--out", str(out)]) == 0
    assert not (out / "memory.png").exists() and (out / "valid_ndcg.png").exists()


def test_no_runs_is_a_clear_error(tmp_path: Path, capsys):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "report"
    assert report.main([str(tmp_path / "empty"), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: no metrics.json found") and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize("breakage", ["not json", json.dumps({"loss": "ce"})])
def test_malformed_run_is_a_clear_error_and_writes_nothing(tmp_path: Path, capsys, breakage):
    fake_run(tmp_path / "runs" / "good")
    (tmp_path / "runs" / "bad").mkdir()
    (tmp_path / "runs" / "bad" / "metrics.json").write_text(breakage)
    out = tmp_path / "report"
    assert report.main([str(tmp_path / "runs"), "--out", str(out)]) == 1
    assert "error:" in capsys.readouterr().err
    assert not out.exists()


def test_missing_folder_is_an_error(tmp_path: Path, capsys):
    assert report.main([str(tmp_path / "nope"), "--out", str(tmp_path / "r")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_command_line(runs_root: Path, tmp_path: Path):
    out = tmp_path / "cli"
    done = subprocess.run([sys.executable, str(ROOT / "experiments" / "report.py"), str(runs_root),
                           "--out", str(out)], capture_output=True, text=True, cwd=ROOT, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert "| beauty | ce | 0.0400 ± 0.0141" in done.stdout


def test_epochs_without_validation_are_skipped_in_the_curve(tmp_path: Path):
    folder = fake_run(tmp_path / "r", epochs=3)
    rows = [json.loads(x) for x in (folder / "history.jsonl").read_text().splitlines()]
    rows[1]["valid"] = None  # train.eval_every = 2 writes such epochs
    (folder / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    curve = report_runs.read_run(folder / "metrics.json").valid_ndcg
    assert [epoch for epoch, _ in curve] == [0, 2]


# ---- grouping by settings ----

def test_runs_with_different_hyperparameters_are_separate_rows(tmp_path: Path, capsys):
    """Issue 15.6: runs of one (dataset, loss) with different lr were averaged into one row."""
    fake_run(tmp_path / "runs" / "ce_s0", seed=0, test=0.1)
    fake_run(tmp_path / "runs" / "ce_s1", seed=1, test=0.3)
    fake_run(tmp_path / "runs" / "ce_lr_s0", seed=0, test=0.9, settings={"optimizer.lr": 0.01})
    fake_run(tmp_path / "runs" / "ce_lr_ep_s0", seed=0, test=0.5,
             settings={"optimizer.lr": 0.01, "schedule.epochs": 30})
    fake_run(tmp_path / "runs" / "cce_s0", loss="cce", seed=0, test=0.2)
    out = tmp_path / "report"
    assert report.main([str(tmp_path / "runs"), "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    rows = table_rows(text)
    assert list(rows) == [  # a loss's rows sorted by label
        ("beauty", "ce (optimizer.lr=0.001, schedule.epochs=unset)"),
        ("beauty", "ce (optimizer.lr=0.01, schedule.epochs=30)"),
        ("beauty", "ce (optimizer.lr=0.01, schedule.epochs=unset)"),
        ("beauty", "cce"),  # one setting: no label
        ("beauty", "popularity"),
    ]
    assert rows[("beauty", "ce (optimizer.lr=0.001, schedule.epochs=unset)")][0] == "0.2000 ± 0.1414"
    assert rows[("beauty", "ce (optimizer.lr=0.001, schedule.epochs=unset)")][-1] == "2"
    assert rows[("beauty", "ce (optimizer.lr=0.01, schedule.epochs=unset)")][0] == "0.9000"
    assert rows[("beauty", "ce (optimizer.lr=0.01, schedule.epochs=30)")][0] == "0.5000"
    assert 'their settings (metrics.json "settings"' in text
    assert "no settings" not in capsys.readouterr().err


def test_the_seed_does_not_split_a_group(tmp_path: Path):
    fake_run(tmp_path / "a", seed=0)
    fake_run(tmp_path / "b", seed=1)
    rows = report_stats.summarize([report_runs.read_run(p) for p in report_runs.find_metrics_files([tmp_path])])
    assert [(r["label"], r["n"]) for r in rows] == [("ce", 2), ("popularity", None)]


def test_settings_are_flattened_to_dotted_names_without_the_seed(tmp_path: Path):
    settings = {"model": {"class": "core.model.SASRec", "dim": 64}, "loss": {"name": "cce", "filter_eps": None},
                "evaluation": {"ks": [10, 20]}, "parallel": {}, "seed": 3}
    assert report_runs.flat_settings(settings, tmp_path) == (
        ("evaluation.ks", "[10, 20]"), ("loss.filter_eps", "null"), ("loss.name", '"cce"'),
        ("model.class", '"core.model.SASRec"'), ("model.dim", "64"), ("parallel", "{}"))
    with pytest.raises(report_runs.ReportError, match="'settings' must be a JSON object"):
        report_runs.flat_settings(["not", "a", "dict"], tmp_path)


def test_run_without_settings_is_said(tmp_path: Path, capsys):
    fake_run(tmp_path / "runs" / "a", seed=0)
    fake_run(tmp_path / "runs" / "old", seed=1, settings=False)
    out = tmp_path / "report"
    assert report.main([str(tmp_path / "runs"), "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert set(table_rows(text)) == {("beauty", "ce"), ("beauty", "ce (no settings recorded)"),
                                     ("beauty", "popularity")}
    assert "1 of 2 runs predate the settings in metrics.json" in text
    assert "no settings in metrics.json" in capsys.readouterr().err


def test_older_runs_without_settings_group_by_dataset_and_loss(tmp_path: Path):
    """metrics.json from before the "settings" section (results/ of 2026-11): one row per loss."""
    for seed in range(2):
        fake_run(tmp_path / f"ce_s{seed}", seed=seed, settings=False)
    fake_run(tmp_path / "cce_s0", loss="cce", settings=False)
    rows = report_stats.summarize([report_runs.read_run(p) for p in report_runs.find_metrics_files([tmp_path])])
    assert [(r["label"], r["n"]) for r in rows] == [("ce", 2), ("cce", 1), ("popularity", None)]


def test_coverage_section_compares_one_config_per_column(tmp_path: Path):
    fake_run(tmp_path / "ce", loss="ce", test=0.3)
    fake_run(tmp_path / "ce_lr", loss="ce", test=0.9, settings={"optimizer.lr": 0.01})
    fake_run(tmp_path / "cce", loss="cce", test=0.1)
    fake_run(tmp_path / "cce_lr", loss="cce", test=0.2, settings={"optimizer.lr": 0.01})
    runs = [report_runs.read_run(p) for p in report_runs.find_metrics_files([tmp_path])]
    lines = [line for line in report_markdown.coverage_section(runs).splitlines() if "| Coverage@10 |" in line]
    # one row per lr, never the mean of both ce configs (0.6000)
    assert [line.split(" | ")[:4] for line in lines] == [
        ["| beauty (optimizer.lr=0.001)", "Coverage@10", "0.3000", "0.1000"],
        ["| beauty (optimizer.lr=0.01)", "Coverage@10", "0.9000", "0.2000"],
    ]


# ---- plots ----

def test_each_run_has_its_own_curve_style_and_legend_entry(tmp_path: Path, monkeypatch):
    """Issue 15.12: several runs of one loss were drawn in one colour and one legend entry."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = []
    close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: (figures.append(fig), close(fig)))
    for seed in range(6):
        fake_run(tmp_path / "runs" / f"ce_s{seed}", seed=seed)
    fake_run(tmp_path / "runs" / "cce_s0", loss="cce", seed=0)
    assert report.main([str(tmp_path / "runs"), "--out", str(tmp_path / "r")]) == 0
    (ax,) = [ax for fig in figures if fig is not None for ax in fig.axes
             if ax.get_ylabel() == "validation NDCG@10"]
    styles = [(line.get_color(), line.get_linestyle(), line.get_marker()) for line in ax.get_lines()]
    assert len(styles) == 7 and len(set(styles)) == 7
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert len(legend) == 7 and len(set(legend)) == 7
    assert "ce seed 5" in legend and "cce seed 0" in legend
    assert len({line.get_color() for line in ax.get_lines()}) == 2  # colour = loss


def test_runs_of_another_parallel_mode_are_never_pooled(tmp_path: Path):
    """Issue 22.6: one process, 2 data-parallel ranks and 2 catalog-parallel ranks are three rows."""
    fake_run(tmp_path / "one", settings={"parallel.world_size": 1, "parallel.catalog_parallel": False})
    fake_run(tmp_path / "dp", settings={"parallel.world_size": 2, "parallel.catalog_parallel": False})
    fake_run(tmp_path / "cp", settings={"parallel.world_size": 2, "parallel.catalog_parallel": True})
    rows = report_stats.summarize([report_runs.read_run(p) for p in report_runs.find_metrics_files([tmp_path])])
    labels = [r["label"] for r in rows if r["label"] != "popularity"]
    assert len(labels) == 3 and all(r["n"] == 1 for r in rows if r["label"] != "popularity")
    assert any("parallel.catalog_parallel=true" in label for label in labels)


@pytest.mark.parametrize("case", ["under a file", "read-only mount", "a file"])
def test_an_unwritable_out_is_one_line_before_any_run_is_read(runs_root: Path, tmp_path: Path, capsys,
                                                             monkeypatch, case):
    """Issue 23.8: report.py --out unwritable was a traceback after all the work."""
    def no_work(*args, **kwargs):
        raise AssertionError("runs were read before --out was checked")
    monkeypatch.setattr(report, "find_metrics_files", no_work)
    (tmp_path / "file").write_text("keep")
    ro = tmp_path / "ro"
    ro.mkdir()
    real_access = os.access  # a read-only mount refuses as root too
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == ro else real_access(p, mode))
    out = {"under a file": tmp_path / "file" / "report", "read-only mount": ro / "report",
           "a file": tmp_path / "file"}[case]
    assert report.main([str(runs_root), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: cannot write --out {out}") and "\n" not in err
    assert (tmp_path / "file").read_text() == "keep" and list(ro.iterdir()) == []


def test_a_loss_that_ran_as_a_stand_in_is_said(tmp_path: Path, capsys):
    """Issue 23.9: metrics.json records the loss asked ("loss") and what ran ("loss_ran")."""
    for loss, ran in (("flash_ce", "ce"), ("cce", "cce")):
        metrics = fake_run(tmp_path / "runs" / loss, loss=loss) / "metrics.json"
        metrics.write_text(json.dumps({**json.loads(metrics.read_text()), "loss_ran": ran}))
    assert report.main([str(tmp_path / "runs"), "--out", str(tmp_path / "report")]) == 0
    text = (tmp_path / "report" / "report.md").read_text()
    assert "some runs ran a stand-in (no CUDA): flash_ce ran as ce." in text
    assert "warning: some runs ran a stand-in for their loss (no CUDA): flash_ce ran as ce" in capsys.readouterr().err
