"""The public API (core/__init__.py): what it exports, that it imports no triton, and a user's path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import core

REPO = Path(__file__).resolve().parents[1]


def test_every_exported_name_resolves():
    for name in core.__all__:
        assert getattr(core, name) is not None, name
    with pytest.raises(AttributeError):
        core.no_such_thing  # noqa: B018


def test_import_core_and_cpu_training_load_no_triton():
    """The package imports, and a CPU loss runs, without triton or cut_cross_entropy loaded."""
    code = (
        "import sys, torch, core\n"
        "e, c = torch.randn(5, 4, requires_grad=True), torch.randn(7, 4)\n"
        "core.ce(e, c, torch.tensor([0, 1, 2, 3, -100])).backward()\n"
        "core.sampled_ce(e, c, torch.tensor([0, 1, 2, 3, 4]), n_negatives=3)\n"
        "print(sorted(m for m in ('triton', 'cut_cross_entropy') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_train_load_evaluate_recommend(tmp_path):
    """A user's first lines: train from Python, load the run, evaluate it, recommend from it."""
    data = core.load_sequences(core.write_synthetic(tmp_path / "tiny", preset="tiny", n_users=120))
    metrics = core.train(data, tmp_path / "run", model=lambda **kw: core.SASRec(dim=16, n_blocks=1, **kw),
                         loss_fn=core.ce, optim=core.Optim(batch_size=64, max_len=10),
                         schedule=core.Schedule(epochs=1, show_progress=False), parallel=core.Parallel(device="cpu"))
    assert metrics["loss"] == "ce"
    run = core.load_run(tmp_path / "run", device="cpu")
    assert core.evaluate(run, split="test") == pytest.approx(metrics["test"], abs=1e-12)
    recs = core.recommend(run, k=5)
    assert len(recs) == 5 * data.n_users
