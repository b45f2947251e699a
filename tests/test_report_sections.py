"""experiments/report.py's later sections: coverage vs the gradient filter, catalog scaling
(bench_epoch results.json with an out-of-memory row), run dates, and a study's unfinished runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from experiments import report, report_markdown, report_runs, report_scaling
from tests.test_report import fake_run

ENV = {"device": "NVIDIA H100 80GB HBM3", "torch": "2.11.0", "triton": "3.6.0",
       "cut_cross_entropy": "25.1.1", "dtype": "bfloat16", "seed": 0}
OOM = "OutOfMemoryError: CUDA out of memory. Tried to allocate 61.04 GiB"


def ok_row(preset: str, loss: str, n_items: int, epoch_s: float, peak: float) -> dict:
    return {"dataset": preset, "loss": loss, "variant": "static", "epoch_s": epoch_s,
            "first_epoch_s": epoch_s, "steps_per_s": 1953 / epoch_s, "peak_gib": peak,
            "n_users": 500_000, "n_items": n_items, "steps_per_epoch": 1953, "error": None}


def bench_results(folder: Path, rows: list[dict]) -> Path:
    """A results.json as experiments/bench_epoch.py writes it (env, args, notes, rows)."""
    folder.mkdir(parents=True)
    path = folder / "results.json"
    path.write_text(json.dumps({"env": ENV, "args": {}, "notes": [], "rows": rows}))
    return path


@pytest.fixture
def study_dir(tmp_path: Path) -> Path:
    """A study folder: CE / CCE / CCE-exact runs on two seeds plus per-(preset, loss) scaling."""
    root = tmp_path / "study"
    for seed, (cov_ce, cov_cce, cov_exact) in enumerate([(0.60, 0.10, 0.58), (0.62, 0.14, 0.60)]):
        for loss, cov in (("ce", cov_ce), ("cce", cov_cce), ("cce_exact", cov_exact)):
            folder = fake_run(root / f"beauty5core_{loss}_s{seed}", dataset="beauty5core", loss=loss,
                              seed=seed, test=0.05)
            record = json.loads((folder / "metrics.json").read_text())
            record["test"]["Coverage@10"] = cov
            record["finished_utc"] = f"2026-11-2{7 + seed}T10:00:00Z"
            (folder / "metrics.json").write_text(json.dumps(record))
    scaling = root / "scaling"
    bench_results(scaling / "items-1m_cce", [ok_row("items-1m", "cce", 1_000_000, 50.0, 3.0)])
    bench_results(scaling / "items-1m_ce", [ok_row("items-1m", "ce", 1_000_000, 190.0, 41.0)])
    bench_results(scaling / "items-4m_cce", [ok_row("items-4m", "cce", 4_000_000, 200.0, 7.5)])
    # bench_epoch's error row: no n_items, no timings
    bench_results(scaling / "items-4m_ce", [{"dataset": "items-4m", "loss": "ce", "variant": "static",
                                             "error": OOM}])
    return root


def section(text: str, title: str) -> list[list[str]]:
    """The table rows (lists of cells) of the section headed ``## title``."""
    body = text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]
    return [[c.strip() for c in line.strip("|").split("|")] for line in body.splitlines()
            if line.startswith("| ") and not line.startswith("| Dataset") and not line.startswith("| Catalog")
            and not line.startswith("| Run ")]


def test_coverage_section_pairs_seeds(study_dir: Path, tmp_path: Path):
    assert report.main([str(study_dir), "--out", str(tmp_path / "r")]) == 0
    text = (tmp_path / "r" / "report.md").read_text()
    rows = {(r[0], r[1]): r[2:] for r in section(text, "Coverage and the gradient filter")}
    assert set(rows) == {("beauty5core", m) for m in ("Coverage@10", "Surprisal@10", "NDCG@10")}
    ce, cce, exact, cce_ce, cce_exact, exact_ce = rows[("beauty5core", "Coverage@10")]
    assert (ce, cce, exact) == ("0.6100 ± 0.0141", "0.1200 ± 0.0283", "0.5900 ± 0.0141")
    # per-seed differences: cce - ce = -0.50, -0.48 -> -0.49 ± 0.0141 over 2 pairs
    assert cce_ce == "-0.4900 ± 0.0141 (2)"
    assert cce_exact == "-0.4700 ± 0.0141 (2)"
    assert exact_ce == "-0.0200 ± 0.0000 (2)"
    assert rows[("beauty5core", "NDCG@10")][3:] == ["+0.0000 ± 0.0000 (2)"] * 3


def test_coverage_difference_of_means_without_seed_pairs(tmp_path: Path):
    fake_run(tmp_path / "a", loss="ce", seed=0, test=0.3)
    fake_run(tmp_path / "b", loss="cce", seed=5, test=0.1)
    runs = [report_runs.read_run(p) for p in report_runs.find_metrics_files([tmp_path])]
    text = report_markdown.coverage_section(runs)
    row = section(text, "Coverage and the gradient filter")[0]
    assert row[:5] == ["beauty", "Coverage@10", "0.3000", "0.1000", "—"]
    assert row[5:] == ["-0.2000 (means)", "—", "—"]


def test_coverage_section_absent_with_one_loss(tmp_path: Path):
    fake_run(tmp_path / "a", loss="ce")
    runs = [report_runs.read_run(p) for p in report_runs.find_metrics_files([tmp_path])]
    assert report_markdown.coverage_section(runs) is None


def test_scaling_section_marks_out_of_memory(study_dir: Path, tmp_path: Path):
    out = tmp_path / "r"
    assert report.main([str(study_dir), "--out", str(out)]) == 0  # found under study/scaling
    text = (out / "report.md").read_text()
    rows = section(text, "Catalog scaling")
    assert [(r[0], r[1]) for r in rows] == [("1,000,000", "ce"), ("1,000,000", "cce"),
                                            ("4,000,000", "ce"), ("4,000,000", "cce")]
    assert rows[0][3:6] == ["190.0", "10.3", "41.00"]
    assert rows[2][3:6] == ["—", "—", "—"] and rows[2][6].startswith("out of memory: OutOfMemoryError")
    png = (out / "scaling.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_scaling_catalog_size_of_an_error_row_comes_from_the_preset(tmp_path: Path):
    path = bench_results(tmp_path / "s", [{"dataset": "items-10m", "loss": "ce", "error": OOM}])
    rows, envs = report_scaling.load_scaling([path])
    assert rows[0]["n_items"] == 10_000_000 and envs == [ENV]


def test_explicit_scaling_file_alone_makes_a_report(tmp_path: Path, capsys):
    path = bench_results(tmp_path / "bench", [ok_row("items-1m", "cce", 1_000_000, 50.0, 3.0),
                                              {"dataset": "items-1m", "loss": "ce", "error": OOM}])
    (tmp_path / "runs").mkdir()
    out = tmp_path / "r"
    assert report.main([str(tmp_path / "runs"), "--scaling", str(path), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["report.md", "scaling.png"]
    text = (out / "report.md").read_text()
    assert "NVIDIA H100 80GB HBM3" in text.splitlines()[0] and "## Catalog scaling" in text


def test_bad_scaling_file_is_one_error_line(tmp_path: Path, capsys):
    fake_run(tmp_path / "runs" / "a")
    (tmp_path / "x.json").write_text(json.dumps({"rows": "nope"}))
    out = tmp_path / "r"
    assert report.main([str(tmp_path / "runs"), "--scaling", str(tmp_path / "x.json"), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "results.json" in err and not out.exists()


def test_moved_aside_scaling_folders_are_ignored(study_dir: Path):
    bench_results(study_dir / "scaling" / "items-10m_cce.failed-1",
                  [ok_row("items-10m", "cce", 10_000_000, 1.0, 1.0)])
    files = report_scaling.find_scaling_files([], [study_dir])
    assert len(files) == 4 and not any("failed" in str(p) for p in files)


def test_header_dates_come_from_finished_utc_only(tmp_path: Path):
    new = fake_run(tmp_path / "new")
    record = json.loads((new / "metrics.json").read_text())
    record["finished_utc"] = "2026-11-28T01:02:03Z"
    (new / "metrics.json").write_text(json.dumps(record))
    old = fake_run(tmp_path / "old", seed=1)
    (old / "log.txt").write_text("2026-11-26 20:36:45 INFO core.train: start\n"
                                 "2026-11-27 00:01:00 INFO core.train: test\n")
    fake_run(tmp_path / "undated", seed=2)
    runs = [report_runs.read_run(p) for p in report_runs.find_metrics_files([tmp_path])]
    line = report_markdown.dates_line(runs)
    # the log's timestamps are not a record of when the run finished: no date is scraped from it
    assert line.startswith("Run dates (UTC): 2026-11-28;") and "2 runs undated" in line


def test_study_failures_are_listed(study_dir: Path, tmp_path: Path):
    (study_dir / "study.json").write_text(json.dumps({"runs": {
        "beauty5core_ce_s0": {"status": "done"},
        "scaling/items-10m_cce": {"status": "timed out", "tail": ["step 900", "killed"]},
        "ml100k_ce_s2": {"status": "not run", "reason": "over --budget-s 400"},
    }}))
    assert report.main([str(study_dir), "--out", str(tmp_path / "r")]) == 0
    rows = section((tmp_path / "r" / "report.md").read_text(), "Runs that did not finish")
    assert rows == [["ml100k_ce_s2", "not run", "over --budget-s 400"],
                    ["scaling/items-10m_cce", "timed out", "killed"]]


def test_a_scaling_result_without_a_date_takes_the_studys(tmp_path):
    """bench_epoch results.json written before it recorded dates: study.json has the date."""
    run = tmp_path / "study" / "scaling" / "items-1m_cce"
    run.mkdir(parents=True)
    row = {"dataset": "items-1m", "loss": "cce", "variant": "static", "n_items": 1_000_000}
    (run / "results.json").write_text(json.dumps({"env": dict(ENV), "rows": [row]}))
    rows, envs = report_scaling.load_scaling([run / "results.json"])
    assert "finished_utc" not in envs[0]  # no study.json: stays undated
    (tmp_path / "study" / "study.json").write_text(json.dumps(
        {"runs": {"scaling/items-1m_cce": {"finished_utc": "2026-11-27T22:00:00Z"}}}))
    rows, envs = report_scaling.load_scaling([run / "results.json"])
    assert envs[0]["finished_utc"] == "2026-11-27T22:00:00Z"
    assert "undated" not in report_markdown.dates_line([], envs)


def test_scaling_plot_tells_variants_of_one_loss_apart(tmp_path: Path, monkeypatch):
    """Issue 15.12: two variants of one loss were drawn alike (same colour, same line)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = []
    monkeypatch.setattr(plt, "close", lambda fig=None: figures.append(fig))
    rows = [ok_row("items-1m", "cce", 1_000_000, 50.0, 3.0), ok_row("items-4m", "cce", 4_000_000, 90.0, 6.0)]
    rows += [dict(r, variant="graph") for r in rows]
    report_scaling.plot_scaling(rows, tmp_path / "s.png", plt, {"cce": "C0"})
    lines = figures[0].axes[0].get_lines()
    assert len(lines) == 2 and len({(x.get_color(), x.get_linestyle()) for x in lines}) == 2
    plt.close(figures[0])
