"""core.train: run folder, resume equivalence, NaN guard, early stopping, the compact loss block."""

from __future__ import annotations

import functools
import json

import pytest
import torch

from core import checkpoint
from core.data.batching import DeviceSequences, n_train_batches
from core.data.shards import load_sequences
from core.data.synthetic import write_synthetic
from core.losses import ce
from core.model import SASRec
from core.train import TrainingDiverged, TrainingError, train

METRIC_KEYS = {"HitRate@10", "NDCG@10", "MRR@10", "Coverage@10", "Surprisal@10"}
DIM = 32
# A small model and short windows keep each epoch well under a second on a 2-core CPU.
FAST = dict(model_fn=functools.partial(SASRec, dim=DIM, n_blocks=1), batch_size=64, max_len=20,
            device="cpu", show_progress=False)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """200 users of the 'tiny' preset: 4 batches per epoch."""
    out = write_synthetic(tmp_path_factory.mktemp("data") / "tiny200", preset="tiny", n_users=200)
    return load_sequences(out)


def test_run_folder_and_metrics(data, tmp_path):
    metrics = train(data=data, out_dir=tmp_path, dataset_name="tiny200", epochs=2, **FAST)

    for name in ("metrics.json", "history.jsonl", "log.txt", "checkpoint.pt", "best.pt"):
        assert (tmp_path / name).is_file(), name
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(metrics))
    assert {"dataset", "loss", "valid", "test", "popularity_test", "epoch_time_s", "first_epoch_time_s",
            "peak_memory_gib", "epochs", "best_epoch", "env"} <= set(on_disk)
    assert on_disk["dataset"] == {"name": "tiny200", "n_users": 200, "n_items": data.n_items,
                                  "n_interactions": len(data.items)}
    assert on_disk["loss"] == "ce"
    for split in ("valid", "test", "popularity_test"):
        assert set(on_disk[split]) == METRIC_KEYS
    assert on_disk["epochs"] == 2 and on_disk["best_epoch"] in (1, 2)
    assert on_disk["peak_memory_gib"] is None  # CPU
    assert on_disk["epoch_time_s"] > 0 and on_disk["first_epoch_time_s"] > 0
    assert {"device", "torch", "triton", "cut_cross_entropy", "dtype", "seed"} <= set(on_disk["env"])
    assert on_disk["env"]["dtype"] == "float32"

    history = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in history] == [1, 2]
    assert all({"train_loss", "epoch_time_s"} <= set(r) and set(r["valid"]) == METRIC_KEYS for r in history)
    assert "epoch 2" in (tmp_path / "log.txt").read_text()

    state = checkpoint.load_torch(tmp_path / "checkpoint.pt")
    assert {"model", "optimizer", "epoch", "rng", "best"} <= set(state)
    assert state["epoch"] == 2
    assert state["model"]["item_emb.weight"].shape == (data.n_items + 1, DIM)


def test_resume_reaches_the_uninterrupted_result(data, tmp_path):
    full = train(data=data, out_dir=tmp_path / "full", epochs=3, **FAST)
    train(data=data, out_dir=tmp_path / "cut", epochs=2, **FAST)
    resumed = train(data=data, out_dir=tmp_path / "cut", epochs=3, resume=True, **FAST)

    assert resumed["valid"] == full["valid"]
    assert resumed["test"] == full["test"]
    assert resumed["best_epoch"] == full["best_epoch"] and resumed["epochs"] == 3
    losses = lambda d: [json.loads(x)["train_loss"] for x in (d / "history.jsonl").read_text().splitlines()]
    assert losses(tmp_path / "cut") == losses(tmp_path / "full")
    a = checkpoint.load_torch(tmp_path / "full" / "checkpoint.pt")["model"]
    b = checkpoint.load_torch(tmp_path / "cut" / "checkpoint.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_a_missing_or_foreign_checkpoint(data, tmp_path):
    with pytest.raises(TrainingError, match="no checkpoint"):
        train(data=data, out_dir=tmp_path, epochs=1, resume=True, **FAST)
    train(data=data, out_dir=tmp_path, epochs=1, **FAST)
    with pytest.raises(TrainingError, match="another setup"):
        train(data=data, out_dir=tmp_path, epochs=2, resume=True, **{**FAST, "batch_size": 32})


def _nan_loss(e, c, targets):
    return ce(e, c, targets) * float("nan")


@pytest.mark.parametrize("nan_check_every", [0, 1])
def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(data, tmp_path, nan_check_every):
    train(data=data, out_dir=tmp_path, epochs=1, **FAST)
    good = checkpoint.load_torch(tmp_path / "checkpoint.pt")
    with pytest.raises(TrainingDiverged, match="epoch 2: training loss is nan"):
        train(data=data, out_dir=tmp_path, epochs=3, resume=True, loss_fn=_nan_loss, loss_name="ce",
              nan_check_every=nan_check_every, **FAST)
    after = checkpoint.load_torch(tmp_path / "checkpoint.pt")
    assert after["epoch"] == 1
    assert all(torch.equal(good["model"][k], after["model"][k]) for k in good["model"])
    assert (tmp_path / "best.pt").is_file()
    assert len((tmp_path / "history.jsonl").read_text().splitlines()) == 1


def test_early_stopping_on_validation_ndcg(data, tmp_path):
    # lr = 0: the model never changes, so no epoch after the first improves NDCG@10.
    metrics = train(data=data, out_dir=tmp_path, epochs=20, patience=2, lr=0.0, **FAST)
    assert metrics["epochs"] == 3 and metrics["best_epoch"] == 1 and metrics["early_stopped"]
    # Resuming a finished run does no more epochs and reports the same test result.
    again = train(data=data, out_dir=tmp_path, epochs=20, patience=2, lr=0.0, resume=True, **FAST)
    assert again["epochs"] == 3 and again["test"] == metrics["test"]


def test_loss_sees_a_compact_block_of_real_positions(data, tmp_path):
    seen = []

    def spy(e, c, targets):
        assert e.shape == (targets.shape[0], DIM) and c.shape == (data.n_items, DIM)
        seen.append((targets.shape[0], targets.min().item(), targets.max().item()))
        return ce(e, c, targets)

    metrics = train(data=data, out_dir=tmp_path, epochs=1, loss_fn=spy, **FAST)
    assert metrics["loss"] == "spy"
    assert len(seen) == n_train_batches(DeviceSequences.from_data(data, "cpu"), batch_size=64)
    assert min(s[1] for s in seen) >= 0 and max(s[2] for s in seen) < data.n_items
    # Every non-padding position, and nothing else, reaches the loss.
    assert sum(s[0] for s in seen) == metrics["positions_per_epoch"]


def test_history_masking_switch_changes_the_rankings(data, tmp_path):
    masked = train(data=data, out_dir=tmp_path / "m", epochs=1, lr=0.0, **FAST)
    unmasked = train(data=data, out_dir=tmp_path / "u", epochs=1, lr=0.0, mask_history=False, **FAST)
    # Same untrained model and data: only the masking differs, and it must change the ranking.
    assert masked["popularity_test"] != unmasked["popularity_test"]
    assert masked["test"] != unmasked["test"]


def test_out_of_memory_becomes_a_one_line_training_error(data, tmp_path):
    def oom(e, c, targets):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 200.00 GiB\nmore detail")

    with pytest.raises(TrainingError, match=r"out of device memory in epoch 1 \(oom, 500 items") as info:
        train(data=data, out_dir=tmp_path, epochs=1, loss_fn=oom, **FAST)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "checkpoint.pt").exists()
