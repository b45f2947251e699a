"""Every top-level gin config parses and trains one short epoch on tiny synthetic data."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from experiments import run

GIN_DIR = Path(__file__).resolve().parents[1] / "gin"
TOP_LEVEL = sorted(GIN_DIR.glob("*.gin"))
SEED_CONFIGS = ("beauty_ce", "beauty_cce", "ml20m_ce", "ml20m_cce", "quickstart")


def tiny_bindings(cache_dir: Path) -> list[str]:
    """Swaps any config's data for 150 users of the 'tiny' preset and trains one short epoch."""
    return [
        "dataset.name = 'tiny150'",
        "dataset.path = None",
        "dataset.raw = None",
        "dataset.synthetic_preset = 'tiny'",
        "dataset.synthetic_overrides = {'n_users': 150}",
        f"dataset.cache_dir = '{cache_dir}'",
        "train.epochs = 1",
        "train.eval_every = 1",
        "train.batch_size = 64",
        "train.device = 'cpu'",
        "train.show_progress = False",
    ]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def test_the_expected_configs_exist():
    names = {p.stem for p in TOP_LEVEL}
    assert set(SEED_CONFIGS) <= names
    for stem in ("beauty5core", "ml100k", "ml20m_like", "beauty_like"):
        assert {f"{stem}_{loss}" for loss in ("ce", "cce", "cce_exact", "flash_ce", "sampled_ce")} <= names
    for stem in ("items_1m", "items_4m", "items_10m"):
        assert {f"{stem}_ce", f"{stem}_cce", f"{stem}_flash_ce"} <= names


@pytest.mark.parametrize("path", sorted(GIN_DIR.rglob("*.gin")), ids=lambda p: str(p.relative_to(GIN_DIR)))
def test_every_gin_file_starts_with_a_comment(path):
    assert path.read_text().startswith("#"), f"{path} must open with a comment saying what it is for"


@pytest.mark.parametrize("path", TOP_LEVEL, ids=lambda p: p.stem)
def test_config_runs_one_epoch(path, cache_dir, tmp_path, capsys):
    out = tmp_path / "run"
    status = run.main(["--gin", str(path), "--out", str(out), *(
        f"--gin_bindings={b}" for b in tiny_bindings(cache_dir))])
    assert status == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    # The config's name ends with its loss file's name, and the recorded loss name (from the
    # registry) starts with it: beauty5core_cce_exact -> gin/loss/cce_exact.gin -> "cce_exact",
    # ml100k_sampled_ce -> gin/loss/sampled_ce.gin -> "sampled_ce_3000_uniform".
    loss_file = re.search(r"include 'gin/loss/(\w+)\.gin'", path.read_text())
    assert metrics["loss"].startswith(loss_file[1])
    assert path.stem == "quickstart" or path.stem.endswith(f"_{loss_file[1]}")
    assert metrics["epochs"] == 1 and metrics["dataset"]["n_users"] == 150
    assert "train.loss_fn" in (out / "config.gin").read_text()
