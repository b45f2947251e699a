"""core.gin_search: configs include each other from the repository root wherever a command runs,
and gin's package-resource misses do not print as errors (other log records still do)."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import gin

from core.gin_search import add_root

ROOT = Path(__file__).resolve().parents[1]


def test_includes_resolve_from_elsewhere_without_error_lines(tmp_path):
    """experiments/run.py started from another folder: the includes are found, stderr has no
    'Path not found' line."""
    bindings = [f"dataset.cache_dir = '{tmp_path / 'cache'}'", "dataset.synthetic_overrides = {'n_users': 150}",
                "train.batch_size = 64", "train.device = 'cpu'", "train.show_progress = False",
                "train.epochs = 1"]
    argv = [sys.executable, str(ROOT / "experiments" / "run.py"), "--gin", str(ROOT / "gin" / "quickstart.gin"),
            "--out", str(tmp_path / "run"), *[a for b in bindings for a in ("--gin_bindings", b)]]
    proc = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Path not found" not in proc.stderr
    assert (tmp_path / "run" / "metrics.json").is_file()


def _parse_an_include(folder: Path) -> None:
    """Parses a config in ``folder`` (the working directory) that includes a root-relative file."""
    config = folder / "c.gin"
    config.write_text("include 'gin/base/train.gin'\n")
    gin.clear_config()
    gin.parse_config_files_and_bindings([str(config)], [], skip_unknown=True)
    gin.clear_config()


def test_only_gin_resource_misses_are_dropped(caplog, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the include is not under the working directory: gin searches
    add_root(ROOT)
    with caplog.at_level(logging.INFO):
        _parse_an_include(tmp_path)
        logging.error("Path not found: something else")  # not from gin: kept
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert messages == ["Path not found: something else"]


def test_without_the_filter_gin_prints_the_misses(caplog, tmp_path, monkeypatch):
    """The case the filter exists for (fails if gin stops logging them: then drop the filter)."""
    from core import gin_search

    monkeypatch.chdir(tmp_path)
    root = logging.getLogger()
    root.removeFilter(gin_search._FILTER)
    try:
        gin.add_config_file_search_path(str(ROOT))
        with caplog.at_level(logging.INFO):
            _parse_an_include(tmp_path)
        assert any("Path not found" in r.getMessage() for r in caplog.records)
    finally:
        root.addFilter(gin_search._FILTER)
