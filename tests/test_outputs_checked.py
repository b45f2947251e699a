"""Issue 23.8: every user-facing command checks its output folder and its device before any
work (``core.atomic.unwritable``, ``core.env.usable_device``): one ``error:`` line, nothing
computed, nothing written. recommend.py and report.py have their own cases in
tests/test_recommend.py and tests/test_report.py; run.py's --out in tests/test_run_folder.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from experiments import run, tune
from experiments.bench import bench_epoch, bench_eval, study
from kernels_bench import sweep_vocab

# a CUDA device this machine lacks, whether or not it has GPUs
MISSING_CUDA = "cuda:99" if torch.cuda.is_available() else "cuda"


def _one_error_line(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def _no_work(monkeypatch, module, name):
    def work(*args, **kwargs):
        raise AssertionError(f"{module.__name__}.{name} ran before the outputs were checked")
    monkeypatch.setattr(module, name, work)


@pytest.fixture
def place(tmp_path):
    """(a regular file, an empty data cache): an --out under the file cannot be made."""
    (tmp_path / "file").write_text("keep")
    (tmp_path / "cache").mkdir()
    return tmp_path / "file", tmp_path / "cache"


def _bindings(cache: Path, device: str = "cpu") -> list[str]:
    bindings = [f"dataset.cache_dir = '{cache}'", "dataset.synthetic_overrides = {'n_users': 150}",
                f"train.device = '{device}'", "train.show_progress = False"]
    return [arg for b in bindings for arg in ("--gin_bindings", b)]


def test_bench_epoch_refuses_an_out_under_a_file_before_loading_data(place, capsys):
    file, cache = place
    argv = ["--gin", "gin/quickstart.gin", *_bindings(cache), "--epochs", "1", "--out", str(file / "b")]
    assert bench_epoch.main(argv) == 2
    assert "is a file" in _one_error_line(capsys)
    assert file.read_text() == "keep" and list(cache.iterdir()) == []


@pytest.mark.parametrize("case", ["out", "device"])
def test_bench_eval_refuses_an_out_under_a_file_and_a_missing_device(place, capsys, monkeypatch, case):
    file, cache = place
    _no_work(monkeypatch, bench_eval, "load_datasets")
    out, device = (file / "b", "cpu") if case == "out" else (cache.parent / "b", MISSING_CUDA)
    argv = ["--preset", "tiny", "--cache-dir", str(cache), "--device", device, "--out", str(out)]
    assert bench_eval.main(argv) == 2
    assert ("is a file" if case == "out" else "--device") in _one_error_line(capsys)
    assert not out.exists() and file.read_text() == "keep"


def test_sweep_vocab_refuses_an_out_that_is_a_file(place, capsys, monkeypatch):
    file, _ = place
    _no_work(monkeypatch, sweep_vocab, "run_checks")
    argv = ["--out", str(file), "--n", "32", "--dim", "16", "--no-progress"]
    assert sweep_vocab.main(argv) == 2
    assert "is a file" in _one_error_line(capsys)
    assert file.read_text() == "keep" and not file.with_name("file.partial").exists()


def test_study_refuses_an_out_under_a_file(place, capsys, monkeypatch):
    file, _ = place
    _no_work(monkeypatch, study, "run_study")
    assert study.main(["real", "--seeds", "0", "--only", "ml100k_*", "--out", str(file / "s")]) == 2
    assert "is a file" in _one_error_line(capsys)


@pytest.mark.parametrize("case", ["out", "device"])
def test_tune_refuses_an_out_under_a_file_and_a_missing_device(place, capsys, monkeypatch, case):
    file, cache = place
    _no_work(monkeypatch, tune, "_open_study")
    out, device = (file / "s", "cpu") if case == "out" else (cache.parent / "s", MISSING_CUDA)
    argv = ["--gin", "gin/quickstart.gin", *_bindings(cache, device), "--space", "gin/tune/tiny.gin",
            "--trials", "1", "--out", str(out)]
    assert tune.main(argv) != 0
    assert ("is a file" if case == "out" else "train.device") in _one_error_line(capsys)
    assert not out.exists() and list(cache.iterdir()) == []


def test_run_refuses_a_missing_device_before_preparing_data(place, capsys):
    _, cache = place
    out = cache.parent / "r"
    assert run.main(["--gin", "gin/quickstart.gin", *_bindings(cache, MISSING_CUDA), "--out", str(out)]) == 2
    line = _one_error_line(capsys)
    assert line.startswith("error: bad gin config: train.device") and "CUDA device" in line
    assert not out.exists() and list(cache.iterdir()) == []  # nothing generated for a run that cannot start
