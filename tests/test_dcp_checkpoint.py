"""Sharded checkpoints of catalog-parallel runs (``torch.distributed.checkpoint``), on CPU/gloo ranks.

- each rank saves its own rows of the item table and their Adam state, and reads back its rows
  whatever number of ranks saved them (2 -> 3: DCP reshards the ``Shard(0)`` DTensor);
- no rank allocates more than one shard of the table (plus small tensors) while saving or
  loading: measured as the tensor storage made under a ``TorchDispatchMode``;
- a run resumes from them equal to an uninterrupted run, resumes on 3 ranks, and ``load_run``
  in one process reads the whole table from the shards;
- the folder is sealed: a flipped byte, a missing file or a missing seal is one line.
"""

from __future__ import annotations

import shutil
import weakref

import pytest
import torch
from torch.distributed.tensor import Shard
from torch.distributed.tensor._utils import _compute_local_shape_and_global_offset
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from core import checkpoint as ckpt
from core.model import SASRec
from core.parallel.catalog import item_ranges
from core.parallel.collectives import DistContext
from core.training.errors import CorruptCheckpoint
from core.training.ranks import Ranks, load_sharded_into
from tests.distributed_ranks import run_ranks

V, DIM = 30_000, 8  # the table (960 KB) dwarfs everything else of the model
SLACK = 64 * 1024  # bytes: the small tensors of a save or load (the model body, Adam's steps)


def test_item_ranges_are_dtensors_shard_0_chunks():
    """The row split is DTensor's ``Shard(0)`` rule, so a rank's rows are its DTensor part."""
    for n in (5, 11, 13, 23, 100, 30_001):
        for world in (1, 2, 3, 4, 7):
            try:
                ranges = item_ranges(n, world)
            except ValueError:
                assert -(-n // world) * (world - 1) >= n  # some rank would get no item
                continue
            for r, (lo, hi) in enumerate(ranges):
                shape, offset = _compute_local_shape_and_global_offset((n, 4), (world,), [r], [Shard(0)])
                assert (shape[0], offset[0]) == (hi - lo, lo)
    with pytest.raises(ValueError, match="at least one item per rank"):
        item_ranges(5, 4)  # chunks of 2: [2, 2, 1, 0]


class _Storage(TorchDispatchMode):
    """Tensor storage that torch ops make while it is on (on this thread): the largest tensor
    and the peak of the new storages alive at once (those already alive before are not counted)."""

    def __init__(self, existing):
        super().__init__()
        self.existing = {t.untyped_storage().data_ptr() for t in existing}
        self.live: dict[int, list] = {}
        self.bytes = self.peak = self.largest = 0

    def _gone(self, ptr, ref):
        refs = self.live.get(ptr)
        if refs is not None:
            refs.remove(ref)
            if not refs:
                del self.live[ptr]
                self.bytes -= self._sizes.pop(ptr)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self._sizes = getattr(self, "_sizes", {})
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor) or t.device.type != "cpu":
                continue
            storage = t.untyped_storage()
            ptr = storage.data_ptr()
            if ptr in self.existing or storage.nbytes() == 0:
                continue
            self.largest = max(self.largest, t.numel())
            if ptr not in self.live:
                self.live[ptr], self._sizes[ptr] = [], storage.nbytes()
                self.bytes += storage.nbytes()
                self.peak = max(self.peak, self.bytes)
            ref = weakref.ref(t, lambda r, p=ptr: self._gone(p, r))
            self.live[ptr].append(ref)
        return out


def _model_and_adam(ctx: DistContext):
    """A catalog-parallel SASRec (this rank's rows only) and Adam with state for every parameter."""
    ranks = Ranks(ctx, catalog_parallel=True)
    torch.manual_seed(0)
    model = ranks.build_model(SASRec, n_items=V, dim=DIM, max_len=4, n_blocks=1, n_heads=2, dropout=0.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    return ranks, model, optimizer


def _local(model, optimizer) -> dict:
    table = model.item_emb.weight
    state = optimizer.state[table]
    return {"weight": table.detach().clone(), "exp_avg": state["exp_avg"].clone(),
            "exp_avg_sq": state["exp_avg_sq"].clone(), "step": state["step"].clone()}


def _save(ctx: DistContext, path: str) -> dict:
    ranks, model, optimizer = _model_and_adam(ctx)
    torch.manual_seed(1)  # replicated parts alike on every rank, as DDP keeps them
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    model.item_emb.weight.grad[0] = 0  # the padding row: zero on every rank, as in training
    optimizer.step()
    existing = [*model.parameters(), *(v for s in optimizer.state.values() for v in s.values())]
    with _Storage(existing) as measured:
        ranks.checkpoint(model, optimizer, {"epoch": 1, "note": "x"}).save(ckpt.Path(path))
    body = {n: p.detach().clone() for n, p in model.named_parameters() if n != "item_emb.weight"}
    return {**_local(model, optimizer), "body": body, "largest": measured.largest, "peak": measured.peak,
            "rows": model.item_emb.weight.shape[0] - 1}


def _load(ctx: DistContext, path: str) -> dict:
    ranks, model, optimizer = _model_and_adam(ctx)
    state = ckpt.sharded_state(ckpt.Path(path))
    state[ckpt.SHARDED_PATH] = ckpt.Path(path)
    existing = [*model.parameters()]
    with _Storage(existing) as measured:
        ranks.restore(model, optimizer, state, "fix")
    with _Storage(existing) as gathering:  # the measure sees a whole table where one is made
        model.item_emb.full_weight()
    body = {n: p.detach().clone() for n, p in model.named_parameters() if n != "item_emb.weight"}
    return {**_local(model, optimizer), "body": body, "largest": measured.largest, "peak": measured.peak,
            "gathered": gathering.largest, "rows": model.item_emb.weight.shape[0] - 1, "epoch": state["epoch"]}


def _whole(results: list[dict], key: str) -> torch.Tensor:
    return torch.cat([results[0][key][:1], *(r[key][1:] for r in results)])


def test_each_rank_saves_and_loads_its_rows_only_and_2_ranks_reshard_to_3(tmp_path):
    path = tmp_path / "checkpoint.pt"
    saved = run_ranks(_save, 2, tmp_path, str(path))
    names = sorted(p.name for p in path.iterdir())
    assert names[:1] + names[-2:] == [".metadata", "seal", "state.pt"]  # and a file per tensor:
    assert {n.split("_")[2] for n in names[1:-2]} == {"0", "1"}  # __R_I_0.distcp, from both ranks
    loaded = run_ranks(_load, 3, tmp_path, str(path))
    table_bytes = (V + 1) * DIM * 4
    shard = max(r["rows"] for r in saved) * DIM * 4  # one saved shard of one tensor
    for r in saved:  # saving: one copy of one of its shards at a time, never the table
        assert r["largest"] * 4 <= shard and r["peak"] <= shard + SLACK < table_bytes, r
    for r in loaded:  # loading: its own Adam moments (made here), plus one saved shard at a time
        own = 2 * (r["rows"] + 1) * DIM * 4
        assert r["largest"] * 4 <= shard and r["peak"] <= own + shard + SLACK, r
        assert r["peak"] - own < table_bytes
    assert all(r["gathered"] >= V * DIM for r in loaded)
    assert [r["rows"] for r in loaded] == [hi - lo for lo, hi in item_ranges(V, 3)]
    for key in ("weight", "exp_avg", "exp_avg_sq"):  # the same table, cut in 3
        assert torch.equal(_whole(loaded, key), _whole(saved, key)), key
    for r in loaded:
        assert torch.equal(r["step"], saved[0]["step"]) and r["epoch"] == 1
        for name, value in saved[0]["body"].items():
            assert torch.equal(r["body"][name], value), name
    # one process reads the whole table from the shards
    model = SASRec(V, dim=DIM, max_len=4, n_blocks=1, n_heads=2, dropout=0.0)
    state = {**ckpt.sharded_state(path), ckpt.SHARDED_PATH: path}
    load_sharded_into(model, None, state)
    assert torch.equal(model.item_emb.weight.detach(), _whole(saved, "weight"))


def test_a_corrupted_missing_or_unsealed_folder_is_one_line_and_never_the_latest(tmp_path):
    ctx = DistContext()
    path = tmp_path / "best.pt"
    ranks = Ranks(ctx, catalog_parallel=False)
    tensors = {"model.w": torch.arange(1000.0), "model.v": torch.ones(3)}
    ckpt.save_sharded(tensors, {"epoch": 2}, path, ctx)
    assert ckpt.latest(path) == path and ckpt.check_sharded(path)["world_size"] == 1
    data = next(p for p in path.iterdir() if p.suffix == ".distcp")
    blob = bytearray(data.read_bytes())
    blob[len(blob) // 2] ^= 1
    data.write_bytes(bytes(blob))
    with pytest.raises(ckpt.CorruptFile, match="digest mismatch") as err:
        ckpt.check_sharded(path)
    assert "\n" not in str(err.value) and data.name in str(err.value)
    assert ranks.gather(None) == [None]
    data.unlink()
    with pytest.raises(ckpt.CorruptFile, match="missing from the checkpoint folder"):
        ckpt.check_sharded(path, part=None)
    # a crash mid-save: the new folder has no seal, the old one stays the latest
    ckpt.save_sharded(tensors, {"epoch": 2}, path, ctx)
    new = tmp_path / ".best.pt.new"
    shutil.copytree(path, new)
    (new / ckpt.SEAL).unlink()
    assert ckpt.latest(path) == path
    # a crash between the two renames: the sealed new folder, else the old one
    path.rename(tmp_path / ".best.pt.old")
    assert ckpt.latest(path) == tmp_path / ".best.pt.old"
    (tmp_path / ".best.pt.old" / ckpt.SEAL).unlink()
    assert ckpt.latest(path) is None
    from core.training.run_folder import _read

    with pytest.raises(CorruptCheckpoint):
        _read(path, "cpu", "fix")  # there is no whole checkpoint: one line
    ckpt.save_sharded(tensors, {"epoch": 3}, path, ctx)  # the next save settles the leftovers
    assert sorted(p.name for p in tmp_path.iterdir() if "best" in p.name) == ["best.pt"]
    assert ckpt.sharded_state(path)["epoch"] == 3
    # a whole state.pt of another checkpoint (same size, its own digest intact) is refused too
    other = tmp_path / "other.pt"
    ckpt.save_sharded(tensors, {"epoch": 4}, other, ctx)
    assert (other / ckpt.STATE).stat().st_size == (path / ckpt.STATE).stat().st_size
    shutil.copy(other / ckpt.STATE, path / ckpt.STATE)
    with pytest.raises(ckpt.CorruptFile, match="digest mismatch"):
        ckpt.sharded_state(path)


# --- a catalog-parallel run: checkpoints, resume (same K and 2 -> 3), load_run in one process --------


def _fit(ctx: DistContext, data_path: str, out: str, epochs: int, resume: bool) -> dict:
    from core.data.shards import load_sequences
    from core.training.loop import train
    from core.training.settings import Evaluation, Optim, Parallel, Schedule
    from tests.test_distributed import MAX_LEN

    data = load_sequences(data_path)
    metrics = train(data, out, optim=Optim(batch_size=8, max_len=MAX_LEN, lr=1e-2, seed=0),
                    schedule=Schedule(epochs=epochs, patience=5, show_progress=False),
                    evaluation=Evaluation(ks=(5,), batch_size=8),
                    parallel=Parallel(ctx=ctx, catalog_parallel=True), resume=resume, data_path=data_path)
    model = {k: v for k, v in _whole_model(ctx, out).items()}
    return {"metrics": metrics, "model": model}


def _whole_model(ctx: DistContext, out: str) -> dict:
    """The last checkpoint's model as this rank reads it (its rows), gathered for the comparison."""
    from core.training.run_folder import RunFolder, _read

    ranks = Ranks(ctx, catalog_parallel=True)
    state = _read(RunFolder(out).checkpoint, "cpu", "fix")
    spec = state["model_settings"]
    model = ranks.build_model(SASRec, **spec["kwargs"])
    ranks.restore(model, None, state, "fix")
    return {k: v.clone() for k, v in model.state_dict().items()}  # the whole-table view


@pytest.fixture
def data_path(tmp_path):
    from core.data.shards import write_shards
    from tests.test_distributed import make_data

    data = make_data()
    return str(write_shards(tmp_path / "data", offsets=data.offsets, items=data.items, n_items=data.n_items,
                            attrs={"name": "synthetic"}))


def test_a_run_resumes_equal_to_an_uninterrupted_one_and_on_3_ranks(data_path, tmp_path):
    whole = run_ranks(_fit, 2, tmp_path, data_path, str(tmp_path / "whole"), 2, False)
    half = tmp_path / "half"
    run_ranks(_fit, 2, tmp_path, data_path, str(half), 1, False)
    assert (half / "checkpoint.pt" / ckpt.SEAL).is_file() and (half / "best.pt" / ckpt.SEAL).is_file()
    shutil.copytree(half, tmp_path / "half3")
    resumed = run_ranks(_fit, 2, tmp_path, data_path, str(half), 2, True)
    for got, want in zip(resumed, whole):
        assert got["metrics"]["valid"] == want["metrics"]["valid"]
        assert got["metrics"]["test"] == want["metrics"]["test"]
        for key, value in want["model"].items():
            assert torch.equal(got["model"][key], value), key
    three = run_ranks(_fit, 3, tmp_path, data_path, str(tmp_path / "half3"), 2, True)
    assert three[0]["metrics"]["epochs"] == 2 and three[0]["metrics"]["world_size"] == 3
    for r in three[1:]:  # every rank reads the same model back from the 3-rank checkpoint
        for key, value in three[0]["model"].items():
            assert torch.equal(r["model"][key], value), key
    # load_run in one process: the whole table, read from the shards, equals the ranks' model
    from core.training.run_folder import load_run

    run = load_run(half, device="cpu")
    best = run_ranks(_best, 2, tmp_path, str(half))
    for key, value in run.model.state_dict().items():
        assert torch.equal(best[0][key], value), key
    # a flipped byte of a shard: one line, before anything is read
    shard = next(p for p in (half / "best.pt").iterdir() if p.name.startswith("__1_"))
    blob = bytearray(shard.read_bytes())
    blob[-5] ^= 1
    shard.write_bytes(bytes(blob))
    with pytest.raises(CorruptCheckpoint, match="digest mismatch") as err:
        load_run(half, device="cpu")
    assert "\n" not in str(err.value)


def _best(ctx: DistContext, out: str) -> dict:
    """best.pt read by each rank (its rows), then gathered for the comparison."""
    from core.training.run_folder import load_run

    run = load_run(out, ctx=ctx)
    assert run.model.item_emb.weight.shape[0] - 1 < run.model.item_emb.n_items
    return {k: v.clone() for k, v in run.model.state_dict().items()}
