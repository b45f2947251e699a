"""Every top-level gin config parses and trains one short epoch on tiny synthetic data."""

from __future__ import annotations

import json
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
    for stem in ("beauty5core", "ml100k"):
        assert {f"{stem}_ce", f"{stem}_cce", f"{stem}_cce_exact"} <= names
    for stem in ("ml20m_like", "beauty_like", "items_1m", "items_4m", "items_10m"):
        assert {f"{stem}_ce", f"{stem}_cce"} <= names


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
    endings = [loss for loss in ("cce_exact", "cce", "ce") if path.stem.endswith(f"_{loss}")]
    assert metrics["loss"] == (endings[0] if endings else "ce")  # quickstart trains with CE
    assert metrics["epochs"] == 1 and metrics["dataset"]["n_users"] == 150
    assert "train.loss_fn" in (out / "config.gin").read_text()
