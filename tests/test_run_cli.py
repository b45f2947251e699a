"""experiments/run.py: bad bindings, missing data, the files of a run, --resume from the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from experiments import run

ROOT = Path(__file__).resolve().parents[1]
METRICS_KEYS = {"dataset", "loss", "valid", "test", "popularity_test", "epoch_time_s", "first_epoch_time_s",
                "peak_memory_gib", "epochs", "best_epoch", "env"}
SPLIT_KEYS = {"HitRate@10", "NDCG@10", "MRR@10", "Coverage@10", "Surprisal@10"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Bindings for a fast quickstart: 150 tiny users, CPU, no progress bar."""
    cache = tmp_path_factory.mktemp("cache")
    bindings = [f"dataset.cache_dir = '{cache}'", "dataset.synthetic_overrides = {'n_users': 150}",
                "train.batch_size = 64", "train.device = 'cpu'", "train.show_progress = False"]
    return [arg for b in bindings for arg in ("--gin_bindings", b)]


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.mark.parametrize("binding", ["train.no_such_parameter = 1", "no_such_configurable.x = 1",
                                     "train.epochs = = 3"])
def test_a_bad_binding_is_an_error(binding, tmp_path, capsys):
    status = run.main(["--gin", "gin/quickstart.gin", "--gin_bindings", binding, "--out", str(tmp_path / "r")])
    assert status == 2
    _one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "r").exists()


def test_a_missing_gin_file_is_an_error(tmp_path, capsys):
    assert run.main(["--gin", str(tmp_path / "nope.gin"), "--out", str(tmp_path / "r")]) == 2
    _one_error_line(capsys.readouterr().err)


def test_missing_prepared_data_names_the_prepare_command(tmp_path):
    # A subprocess, as a user runs it: exit status, stderr and no traceback are all real.
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "experiments/run.py", "--gin", "gin/ml20m_ce.gin", "--out", str(out),
         "--gin_bindings", f"dataset.path = '{tmp_path / 'no_ml20m'}'", "--gin_bindings", "dataset.download = False"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    line = _one_error_line(proc.stderr)
    assert "python tools/prepare_data.py --format ml20m --download" in line and f"--out {tmp_path / 'no_ml20m'}" in line
    assert not out.exists()


def test_a_missing_raw_file_is_an_error(tmp_path, capsys):
    out = tmp_path / "run"
    status = run.main(["--gin", "gin/beauty5core_ce.gin", "--out", str(out),
                       "--gin_bindings", f"dataset.raw = '{tmp_path / 'none.csv'}'"])
    assert status == 1
    assert "none.csv not found" in _one_error_line(capsys.readouterr().err)
    assert not out.exists()


def test_a_run_writes_its_files_and_resumes(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    assert run.main(["--gin", "gin/quickstart.gin", "--out", str(out), *tiny,
                     "--gin_bindings", "train.epochs = 1"]) == 0
    printed = capsys.readouterr().out
    assert "popularity" in printed and "HitRate@10" in printed

    for name in ("config.gin", "metrics.json", "history.jsonl", "log.txt", "checkpoint.pt", "best.pt"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert METRICS_KEYS <= set(metrics)
    assert SPLIT_KEYS == set(metrics["test"]) == set(metrics["valid"]) == set(metrics["popularity_test"])
    assert metrics["dataset"]["name"] == "tiny" and metrics["loss"] == "ce"
    config = (out / "config.gin").read_text()
    assert "train.epochs = 1" in config and "SASRec.dim = 64" in config

    # Same folder without --resume: refused, nothing touched.
    assert run.main(["--gin", "gin/quickstart.gin", "--out", str(out), *tiny]) == 2
    assert "--resume" in _one_error_line(capsys.readouterr().err)

    # --resume without --gin reads the run's own config.gin; bindings still apply on top.
    assert run.main(["--resume", "--out", str(out), "--gin_bindings", "train.epochs = 2"]) == 0
    history = (out / "history.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in history] == [1, 2]
    assert json.loads((out / "metrics.json").read_text())["epochs"] == 2


@pytest.mark.parametrize("binding", ["SASRec.n_heads = 3", "train.ks = (1000,)", "SASRec.max_len = 100"])
def test_a_setting_the_model_refuses_is_one_line_and_leaves_no_folder(binding, tiny, tmp_path, capsys):
    status = run.main(["--gin", "gin/quickstart.gin", *tiny, "--gin_bindings", binding,
                       "--out", str(tmp_path / "r")])
    assert status == 2
    assert "error: bad gin config" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
