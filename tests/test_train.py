"""core.training: run folder, resume equivalence, NaN guard, early stopping, the compact loss block."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
import torch

from core import checkpoint
from core.data.batching import DeviceSequences, TrainBatches
from core.data.shards import SequenceData, load_sequences
from core.data.synthetic import write_synthetic
from core.losses import ce
from core.model import SASRec
from core.training import NothingToTrain, RunFolderError, TrainingDiverged, TrainingError, train_flat
from core.training.step import StepSettings, _eager_step, compact_index, make_step, run_epoch

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
    metrics = train_flat(data=data, out_dir=tmp_path, dataset_name="tiny200", epochs=2, **FAST)

    for name in ("metrics.json", "history.jsonl", "log.txt", "checkpoint.pt", "best.pt"):
        assert (tmp_path / name).is_file(), name
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(metrics))
    assert {"dataset", "loss", "valid", "test", "popularity_test", "epoch_time_s", "first_epoch_time_s",
            "peak_memory_gib", "epochs", "best_epoch", "env"} <= set(on_disk)
    assert on_disk["dataset"] == {"name": "tiny200", "n_users": 200, "n_items": data.n_items,
                                  "n_interactions": len(data.items), "path": data.attrs.get("path"),
                                  "duplicates": None}  # synthetic data: nothing was dropped as a duplicate
    assert on_disk["loss"] == "ce"
    for split in ("valid", "test", "popularity_test"):
        assert set(on_disk[split]) == METRIC_KEYS
    assert on_disk["epochs"] == 2 and on_disk["best_epoch"] in (1, 2)
    assert on_disk["peak_memory_gib"] is None  # CPU
    assert on_disk["epoch_time_s"] > 0 and on_disk["first_epoch_time_s"] > 0
    assert {"device", "torch", "triton", "cut_cross_entropy", "dtype", "seed"} <= set(on_disk["env"])
    assert on_disk["env"]["dtype"] == "float32"
    settings = on_disk["settings"]  # grouped, for reports: what the run trained with
    assert set(settings) == {"model", "loss", "optimizer", "schedule", "evaluation", "step", "data",
                             "parallel", "seed"}
    assert settings["model"]["class"] == "core.model.SASRec" and settings["model"]["dim"] == DIM
    assert settings["loss"] == {"name": "ce"}
    assert settings["optimizer"] == {"lr": 1e-3, "weight_decay": 0.0, "batch_size": 64}
    assert settings["schedule"] == {"epochs": 2, "patience": 10, "eval_every": 1, "nan_check_every": 0}
    assert settings["evaluation"] == {"ks": [10], "mask_history": True}
    assert settings["data"]["name"] == "tiny200" and settings["data"]["n_items"] == data.n_items
    assert settings["parallel"] == {"world_size": 1, "catalog_parallel": False, "gpu_memory_gib": None}
    assert settings["step"]["packed"] is True  # the default body: packed (batches at most half full)
    assert settings["seed"] == 0

    history = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in history] == [1, 2]
    assert all({"train_loss", "epoch_time_s"} <= set(r) and set(r["valid"]) == METRIC_KEYS for r in history)
    assert "epoch 2" in (tmp_path / "log.txt").read_text()

    state = checkpoint.load_torch(tmp_path / "checkpoint.pt")
    assert {"model", "optimizer", "epoch", "rng", "best"} <= set(state)
    assert state["epoch"] == 2
    assert state["model"]["item_emb.weight"].shape == (data.n_items + 1, DIM)


def test_resume_reaches_the_uninterrupted_result(data, tmp_path):
    full = train_flat(data=data, out_dir=tmp_path / "full", epochs=3, **FAST)
    train_flat(data=data, out_dir=tmp_path / "cut", epochs=2, **FAST)
    resumed = train_flat(data=data, out_dir=tmp_path / "cut", epochs=3, resume=True, **FAST)

    assert resumed["valid"] == full["valid"]
    assert resumed["test"] == full["test"]
    assert resumed["best_epoch"] == full["best_epoch"] and resumed["epochs"] == 3
    losses = lambda d: [json.loads(x)["train_loss"] for x in (d / "history.jsonl").read_text().splitlines()]
    assert losses(tmp_path / "cut") == losses(tmp_path / "full")
    a = checkpoint.load_torch(tmp_path / "full" / "checkpoint.pt")["model"]
    b = checkpoint.load_torch(tmp_path / "cut" / "checkpoint.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_resumed_runs_first_epoch_stays_out_of_the_mean_epoch_time(data, tmp_path):
    train_flat(data=data, out_dir=tmp_path, epochs=2, **FAST)
    metrics = train_flat(data=data, out_dir=tmp_path, epochs=4, resume=True, **FAST)
    history = [json.loads(x) for x in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert [r["warmup"] for r in history] == [True, False, True, False]
    steady = [history[1]["epoch_time_s"], history[3]["epoch_time_s"]]
    assert metrics["epoch_time_s"] == pytest.approx(sum(steady) / 2)
    assert metrics["first_epoch_time_s"] == history[0]["epoch_time_s"]


def test_resume_refuses_a_missing_or_foreign_checkpoint(data, tmp_path):
    with pytest.raises(RunFolderError, match="no checkpoint"):
        train_flat(data=data, out_dir=tmp_path / "r", epochs=1, resume=True, **FAST)
    assert not (tmp_path / "r").exists()
    train_flat(data=data, out_dir=tmp_path / "r", epochs=1, **FAST)
    with pytest.raises(RunFolderError, match="train.batch_size is 32 here but the run trained with 64"):
        train_flat(data=data, out_dir=tmp_path / "r", epochs=2, resume=True, **{**FAST, "batch_size": 32})
    # other data of the same size: the same users' sequences in another order
    order = np.arange(data.n_users)[::-1]
    lengths = np.diff(data.offsets)[order]
    other = SequenceData(offsets=np.concatenate([[0], np.cumsum(lengths)]),
                         items=np.concatenate([data.items[data.offsets[u]:data.offsets[u + 1]] for u in order]),
                         n_users=data.n_users, n_items=data.n_items)
    with pytest.raises(RunFolderError, match="data.checksum"):
        train_flat(data=other, out_dir=tmp_path / "r", epochs=2, resume=True, **FAST)


def _nan_after(calls: int):
    """CE that turns NaN from its ``calls``-th call on: one loss function for the whole run,
    so a resume sees the same loss setting."""
    count = [0]

    def ce_then_nan(e, c, targets):
        count[0] += 1
        return ce(e, c, targets) * (float("nan") if count[0] > calls else 1.0)

    return ce_then_nan


@pytest.mark.parametrize("nan_check_every", [0, 1])
def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(data, tmp_path, nan_check_every):
    loss_fn = _nan_after(4)  # 4 batches per epoch: epoch 2 diverges
    with pytest.raises(TrainingDiverged, match="epoch 2: training loss is nan") as info:
        train_flat(data=data, out_dir=tmp_path, epochs=3, loss_fn=loss_fn,
              nan_check_every=nan_check_every, **FAST)
    assert "still holds the last good epoch (1)" in str(info.value)
    after = checkpoint.load_torch(tmp_path / "checkpoint.pt")
    assert after["epoch"] == 1
    assert (tmp_path / "best.pt").is_file()
    assert len((tmp_path / "history.jsonl").read_text().splitlines()) == 1
    # log.txt says why the run ended (issue 15.8)
    assert "run ended: TrainingDiverged: epoch 2: training loss is nan" in (tmp_path / "log.txt").read_text()


def test_nan_in_the_first_epoch_says_no_checkpoint_exists(data, tmp_path):
    """Issue 15.8: the message was "checkpoint.pt still holds the last good epoch (0)"."""
    with pytest.raises(TrainingDiverged, match="no checkpoint was written") as info:
        train_flat(data=data, out_dir=tmp_path, epochs=2, loss_fn=_nan_after(0), **FAST)
    assert "last good epoch" not in str(info.value)
    assert not (tmp_path / "checkpoint.pt").exists()
    log = (tmp_path / "log.txt").read_text()
    assert "run ended: TrainingDiverged" in log and "no checkpoint was written" in log


def test_early_stopping_on_validation_ndcg(data, tmp_path):
    # lr = 0: the model never changes, so no epoch after the first improves NDCG@10.
    metrics = train_flat(data=data, out_dir=tmp_path, epochs=20, patience=2, lr=0.0, **FAST)
    assert metrics["epochs"] == 3 and metrics["best_epoch"] == 1 and metrics["early_stopped"]
    # Resuming a finished, early-stopped run would train nothing: refused, the folder unchanged
    # (issue 23.3: it used to rewrite config.gin with settings that never applied).
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    with pytest.raises(NothingToTrain, match=r"nothing to train: the run ended at epoch 3 \(early stop\)"):
        train_flat(data=data, out_dir=tmp_path, epochs=20, patience=20, lr=0.0, resume=True, **FAST)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before
    # Without metrics.json (killed after the last checkpoint, before the test) it runs the test only.
    (tmp_path / "metrics.json").unlink()
    again = train_flat(data=data, out_dir=tmp_path, epochs=20, patience=2, lr=0.0, resume=True, **FAST)
    assert again["epochs"] == 3 and again["test"] == metrics["test"]


def test_loss_sees_a_compact_block_of_real_positions(data, tmp_path):
    seen = []

    def spy(e, c, targets):
        assert e.shape == (targets.shape[0], DIM) and c.shape == (data.n_items, DIM)
        seen.append((targets.shape[0], targets.min().item(), targets.max().item()))
        return ce(e, c, targets)

    metrics = train_flat(data=data, out_dir=tmp_path, epochs=1, loss_fn=spy, **FAST)
    assert metrics["loss"] == "spy"
    assert len(seen) == len(TrainBatches(DeviceSequences.from_data(data, "cpu"), batch_size=64,
                                         max_len=20, seed=0))
    assert min(s[1] for s in seen) >= 0 and max(s[2] for s in seen) < data.n_items
    # Every non-padding position, and nothing else, reaches the loss.
    assert sum(s[0] for s in seen) == metrics["positions_per_epoch"]


def test_history_masking_switch_changes_the_rankings(data, tmp_path):
    masked = train_flat(data=data, out_dir=tmp_path / "m", epochs=1, lr=0.0, **FAST)
    unmasked = train_flat(data=data, out_dir=tmp_path / "u", epochs=1, lr=0.0, mask_history=False, **FAST)
    # Same untrained model and data: only the masking differs, and it must change the ranking.
    assert masked["popularity_test"] != unmasked["popularity_test"]
    assert masked["test"] != unmasked["test"]


def test_out_of_memory_becomes_a_one_line_training_error(data, tmp_path):
    def oom(e, c, targets):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 200.00 GiB\nmore detail")

    with pytest.raises(TrainingError, match=r"out of device memory in epoch 1 \(oom, 500 items") as info:
        train_flat(data=data, out_dir=tmp_path, epochs=1, loss_fn=oom, **FAST)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "checkpoint.pt").exists()


# --- issue 6: one step, sync-free compaction, compile path -----------------------------------

# train() on `data` with FAST, 3 epochs, on a 2-core x86 CPU: the refactor must not move them.
# Recorded with the code before issue 6 (boolean-mask gather, duplicated step), then again when
# the item table's init became blockwise-seeded (issue 22; the old init, restored by hand, still
# gave the old numbers exactly: [6.2026, 6.1416, 6.0742], NDCG@10 0.0965).
BEFORE_LOSSES = [6.212620735168457, 6.144983291625977, 6.0644683837890625]
BEFORE_TEST = {"HitRate@10": 0.205, "NDCG@10": 0.10467160500806637, "MRR@10": 0.07438492063492064,
               "Coverage@10": 0.43, "Surprisal@10": 0.440535942956548}
# The same run with the packed body (issue 21, the default since): packing moves the numbers
# on purpose, so they are recorded separately and the padded ones above stay pinned on
# ``SASRec.packed = False`` (the padded body is the packed one's oracle, tests/test_packed.py).
# What moves them: packed attention has no dropout on its probabilities (FlexAttention offers
# none), the other dropouts draw over (T, D) instead of (B, L, D), and sums run in another order.
PACKED_LOSSES = [6.206575393676758, 6.145256519317627, 6.067934989929199]
PACKED_TEST = {"HitRate@10": 0.205, "NDCG@10": 0.10274914670125014, "MRR@10": 0.07162103174603174,
               "Coverage@10": 0.442, "Surprisal@10": 0.44260498821365324}


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_train_reproduces_the_numbers_from_before_the_refactor(data, tmp_path, packed, monkeypatch):
    # every batch packed, however full (the default packs only batches at most half full)
    monkeypatch.setattr("core.training.step.PACK_MAX_FILL", 1.0)
    fast = {**FAST, "model_fn": functools.partial(SASRec, dim=DIM, n_blocks=1, packed=packed)}
    metrics = train_flat(data=data, out_dir=tmp_path, epochs=3, **fast)
    losses = [json.loads(x)["train_loss"] for x in (tmp_path / "history.jsonl").read_text().splitlines()]
    # rel 1e-4: the same code on another CPU or torch build may round differently; a real
    # change of the step (other positions, other order) moves these by far more.
    assert losses == pytest.approx(PACKED_LOSSES if packed else BEFORE_LOSSES, rel=1e-4)
    assert metrics["test"] == pytest.approx(PACKED_TEST if packed else BEFORE_TEST, rel=1e-4)


@pytest.mark.parametrize("batch_size,max_len", [(64, 20), (7, 3), (200, 50)])
def test_host_positions_match_the_device_mask(data, batch_size, max_len):
    batches = TrainBatches(DeviceSequences.from_data(data, "cpu"), batch_size=batch_size,
                           max_len=max_len, seed=3)
    for epoch in (1, 2):
        counts = [(b.positions, int((b.targets != 0).sum())) for b in batches.epoch(epoch)]
        assert [host for host, _ in counts] == [device for _, device in counts]
        assert sum(host for host, _ in counts) == batches.positions_per_epoch


def test_compact_index_equals_the_boolean_mask():
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(9, 6, 4, generator=gen)
    for mask in (torch.rand(9, 6, generator=gen) > 0.4, torch.zeros(9, 6, dtype=torch.bool),
                 torch.ones(9, 6, dtype=torch.bool)):
        index = compact_index(mask, int(mask.sum()))
        assert torch.equal(hidden.flatten(0, 1).index_select(0, index), hidden[mask])
    with pytest.raises(ValueError, match="True entries"):
        compact_index(mask, int(mask.sum()) - 1)


def _fresh(seed=0, **model_args):
    torch.manual_seed(seed)
    return SASRec(n_items=500, dim=DIM, n_blocks=1, max_len=20, **model_args)


def test_device_counted_and_host_counted_steps_train_bit_for_bit_alike(data):
    """bench_epoch's ``base`` variant (the count read back from the device) trains as ``train``."""
    from experiments.bench.bench_epoch import counted_on_device

    batches = TrainBatches(DeviceSequences.from_data(data, "cpu"), batch_size=64, max_len=20, seed=0)
    results = []
    for on_device in (True, False):
        model = _fresh()
        step = make_step(model, ce, lr=1e-3, weight_decay=0.0, batch_size=64, max_len=20,
                         settings=StepSettings())
        step = counted_on_device(step) if on_device else step
        losses = [run_epoch(step, batches.epoch(epoch), device=torch.device("cpu"))[0] for epoch in (1, 2)]
        results.append((losses, model.state_dict()))
    (a, sa), (b, sb) = results
    assert a == b
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def _one_step(data, pad_to=None, probe=False):
    """Loss and gradients of one step (lr 0: the step leaves the weights alone) on batch 0;
    with ``probe`` timed from outside as bench_epoch's breakdown does (the phase names)."""
    from experiments.bench.bench_epoch import PhaseProbe

    model = _fresh(dropout=0.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    seqs = DeviceSequences.from_data(data, "cpu")
    batch = next(TrainBatches(seqs, batch_size=50, max_len=20, seed=0).epoch(1))
    timer = PhaseProbe(torch.device("cpu"))
    loss_fn = timer.around(ce) if probe else ce
    timer.attach(opt)
    step = _eager_step(model, model, opt, loss_fn, amp=False, pad_to=pad_to, cudagraphs=False)
    timer.stamps = [] if probe else None
    loss = step(batch.inputs, batch.targets, batch.positions)
    marks = [name for name, _, _ in timer.stamps or []]
    return loss, {k: p.grad.clone() for k, p in model.named_parameters()}, marks


def test_padding_the_last_batch_and_timing_marks_change_nothing(data):
    loss, grads, _ = _one_step(data)
    padded_loss, padded_grads, _ = _one_step(data, pad_to=64)
    marked_loss, marked_grads, marks = _one_step(data, probe=True)
    assert marks == ["model_forward", "loss", "model_backward", "optimizer"]
    for other_loss, other in ((padded_loss, padded_grads), (marked_loss, marked_grads)):
        torch.testing.assert_close(other_loss, loss, rtol=1e-6, atol=0)
        for k in grads:
            torch.testing.assert_close(other[k], grads[k], rtol=1e-5, atol=1e-8)


def test_a_bad_compile_mode_fails_before_the_run_folder(data, tmp_path):
    with pytest.raises(ValueError, match="train.compile"):
        train_flat(data=data, out_dir=tmp_path / "run", epochs=1, compile="fastest", **FAST)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_compiled_training_matches_eager_without_dropout(data, tmp_path):
    # dropout 0: compiled RNG differs from eager; the padded last batch must not change a thing.
    args = {**FAST, "model_fn": functools.partial(SASRec, dim=DIM, n_blocks=1, dropout=0.0)}
    eager = train_flat(data=data, out_dir=tmp_path / "e", epochs=2, **args)
    compiled = train_flat(data=data, out_dir=tmp_path / "c", epochs=2, compile=True, **args)
    losses = lambda d: [json.loads(x)["train_loss"] for x in (d / "history.jsonl").read_text().splitlines()]
    assert losses(tmp_path / "c") == pytest.approx(losses(tmp_path / "e"), rel=1e-4)
    assert compiled["valid"]["NDCG@10"] == pytest.approx(eager["valid"]["NDCG@10"], abs=1e-3)
