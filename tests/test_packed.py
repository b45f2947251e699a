"""Packed batches (issue 21, point 1; ``core.model.pack``, ``SASRec.forward(seq, pack=T)``): the
batch's real positions in one (T, D) block under a document-causal mask. The padded model is
the oracle: packed outputs and gradients at the real positions equal its own, and deliberately
wrong packings (no document separation, positions off by one) must fail the same comparison.

CPU: the padded-layout kernel (the CPU's path: FlexAttention has no CPU backward) and eager
FlexAttention forwards (no grad) against the padded model; the block mask against
``create_block_mask``; the packed steps against the padded ones. GPU (``-m gpu``): compiled
FlexAttention forward and gradients (fp32 and bf16 autocast), a sync-free pack, and the graphed
packed step against the eager packed step.
"""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import create_block_mask

import core.model
import core.training.step as step_module
from core.data.batching import DeviceSequences, TrainBatches
from core.data.shards import load_sequences
from core.data.synthetic import write_synthetic
from core.losses import ce
from core.model import (
    FLEX_BLOCK,
    SASRec,
    document_causal,
    document_causal_block_mask,
    pack,
    packed_attention,
)
from core.training.step import (
    StepSettings,
    _eager_step,
    make_step,
    packed_length,
    run_epoch,
    step_body,
)

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
# eager flex_attention on the CPU warns that it is unfused: that is what these tests run
eager_flex = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")

N_ITEMS, MAX_LEN = 300, 20

# rows of varied lengths: empty rows, length 1, full rows (L), everything between
LENGTHS = [
    [0, 1, 20, 3, 2, 0, 7, 15, 1, 20, 4],
    [1] * 9,
    [20] * 4 + [0] * 3,
    [5, 0, 0, 19, 2, 11, 1, 1, 8, 13, 20, 6, 3, 0, 9],
]


def _batch(lengths, L=MAX_LEN, seed=0, device="cpu") -> torch.Tensor:
    """(B, L) left-padded item ids, row b holding lengths[b] random items."""
    gen = torch.Generator().manual_seed(seed)
    seq = torch.zeros(len(lengths), L, dtype=torch.int64)
    for b, n in enumerate(lengths):
        if n:
            seq[b, L - n:] = torch.randint(1, N_ITEMS + 1, (n,), generator=gen)
    return seq.to(device)


def _model(device="cpu", n_items=N_ITEMS, **kw) -> SASRec:
    torch.manual_seed(0)
    args = dict(dim=32, n_heads=2, n_blocks=2, max_len=MAX_LEN, dropout=0.0) | kw
    return SASRec(n_items, **args).to(device)


def _outputs_and_grads(model, seq, length=None):
    """Hidden states at the real positions (N, D), row-major, and the gradients of a CE loss
    on them; ``length`` None: the padded body, else packed into ``length`` slots."""
    model.zero_grad(set_to_none=True)
    real = seq != 0
    n = int(real.sum())
    e = model(seq)[real] if length is None else model(seq, pack=length)[:n]
    targets = (torch.arange(n, device=seq.device) * 7) % N_ITEMS  # any fixed targets
    F.cross_entropy(e.float() @ model.catalog().float().T, targets).backward()
    return e.detach(), {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


def assert_matches_padded(model, seq, length, *, grads=True, rtol=1e-5, atol=1e-5):
    """The packed body's outputs (and loss gradients) equal the padded body's at every real
    position; AssertionError otherwise."""
    if grads:
        ref, ref_grads = _outputs_and_grads(model, seq)
        out, out_grads = _outputs_and_grads(model, seq, length)
    else:
        with torch.no_grad():
            ref, out = model(seq)[seq != 0], model(seq, pack=length)[: int((seq != 0).sum())]
    torch.testing.assert_close(out, ref, rtol=rtol, atol=atol)
    if grads:
        assert out_grads.keys() == ref_grads.keys()
        for k in ref_grads:
            torch.testing.assert_close(out_grads[k], ref_grads[k], rtol=rtol, atol=atol, msg=k)


# --- the packing and its mask ------------------------------------------------------------------


def test_pack_lays_real_positions_out_row_major_then_filler():
    seq = _batch(LENGTHS[0])
    n = int((seq != 0).sum())
    p = pack(seq, n + 6, block_mask=False)
    assert torch.equal(seq.flatten()[p.index[:n]], seq[seq != 0])  # the boolean mask's order
    assert p.valid[:n].all() and not p.valid[n:].any()
    rows = torch.arange(seq.shape[0]).repeat_interleave((seq != 0).sum(1))
    assert torch.equal(p.doc[:n], rows)
    assert torch.equal(p.doc[n:], seq.shape[0] + torch.arange(n, n + 6))  # one document each
    assert (p.doc.diff() >= 0).all()
    for s in range(n + 6):  # each slot's document starts at its first slot
        assert p.start[s] == int((p.doc == p.doc[s]).nonzero()[0])
    with pytest.raises(ValueError, match="do not fit"):
        pack(seq, n - 1)


@pytest.mark.parametrize("block", [16, FLEX_BLOCK])
@pytest.mark.parametrize("lengths", LENGTHS, ids=range(len(LENGTHS)))
def test_block_mask_built_from_tensors_is_create_block_masks(lengths, block):
    seq = _batch(lengths * 12)  # several tiles, documents across tile edges
    n = int((seq != 0).sum())
    T = -(-(n + 1) // block) * block
    p = pack(seq, T, block_mask=False)
    ours = document_causal_block_mask(p.doc, p.start, block=block)
    ref = create_block_mask(document_causal(p.doc), None, None, T, T, device="cpu", BLOCK_SIZE=block)
    assert torch.equal(ours.to_dense(), ref.to_dense())
    assert torch.equal(ours.kv_num_blocks, ref.kv_num_blocks)
    assert torch.equal(ours.full_kv_num_blocks, ref.full_kv_num_blocks)
    for mine, theirs, count in ((ours.kv_indices, ref.kv_indices, ref.kv_num_blocks),
                                (ours.full_kv_indices, ref.full_kv_indices, ref.full_kv_num_blocks)):
        used = torch.arange(mine.shape[-1]) < count[..., None]
        assert torch.equal(mine[used], theirs[used])


def test_a_new_batchs_block_mask_reuses_the_compiled_attention():
    """The compiled FlexAttention (CUDA) sees a new mask_mod closure every batch: only a new
    length T may compile again, not a new batch (a counting backend, on the CPU)."""
    from torch._dynamo.testing import CompileCounter
    from torch.nn.attention.flex_attention import flex_attention

    counter = CompileCounter()
    flex = torch.compile(flex_attention, backend=counter, dynamic=False)
    for i, lengths in enumerate(LENGTHS * 2):
        seq = _batch(lengths * 3, seed=i)
        T = 512 if i < len(LENGTHS) else 640
        q = torch.randn(1, 2, T, 16)
        with torch.no_grad():
            flex(q, q, q, block_mask=pack(seq, T, block_mask=True).block_mask)
        assert counter.frame_count == (1 if i < len(LENGTHS) else 2)


# --- the packed body against the padded oracle ---------------------------------------------------


@pytest.mark.parametrize("lengths", LENGTHS, ids=range(len(LENGTHS)))
@pytest.mark.parametrize("L", [MAX_LEN, 12])
def test_packed_outputs_and_gradients_equal_the_padded_models(lengths, L):
    seq = _batch([min(n, L) for n in lengths], L=L)
    n = int((seq != 0).sum())
    model = _model().eval()
    assert_matches_padded(model, seq, n)  # exactly the real positions
    assert_matches_padded(model, seq, n + 37)  # filler changes nothing
    model.train()  # dropout 0: training mode computes the same
    assert_matches_padded(model, seq, n + 5)


@eager_flex
@pytest.mark.parametrize("lengths", LENGTHS, ids=range(len(LENGTHS)))
def test_flex_attention_equals_the_padded_layout_kernel_and_model(lengths, monkeypatch):
    """Eager FlexAttention (forward only: no CPU backward) with our block mask."""
    seq = _batch(lengths * 10)
    n = int((seq != 0).sum())
    T = -(-n // FLEX_BLOCK) * FLEX_BLOCK + FLEX_BLOCK  # at least one tile of filler
    p = pack(seq, T, block_mask=True)
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 2, T, 16, generator=gen) for _ in range(3))
    flex = packed_attention(q, k, v, p, kernel="flex")
    padded = packed_attention(q, k, v, p, kernel="padded")
    torch.testing.assert_close(flex[:, :, :n], padded[:, :, :n], rtol=1e-5, atol=1e-5)
    # the whole model through FlexAttention (pack builds the block mask, as on CUDA)
    monkeypatch.setattr(core.model, "pack", functools.partial(pack, block_mask=True))
    assert_matches_padded(_model().eval(), seq, T, grads=False)


@eager_flex
def test_a_wrong_mask_or_wrong_positions_fail_the_comparison(monkeypatch):
    """The oracle test can fail: plain causal attention over the whole block (no document
    separation), and every position off by one, are both caught."""
    seq = _batch(LENGTHS[0] * 4)
    n = int((seq != 0).sum())
    T = -(-n // FLEX_BLOCK) * FLEX_BLOCK
    model = _model().eval()
    assert_matches_padded(model, seq, T, grads=False)

    def causal(b, h, q, kv):
        return kv <= q

    with monkeypatch.context() as m:  # causal only: rows see each other's items
        m.setattr(core.model, "pack", lambda s, t: pack(s, t, block_mask=False)._replace(
            block_mask=create_block_mask(causal, None, None, t, t, device="cpu")))
        with pytest.raises(AssertionError, match="not close"):
            assert_matches_padded(model, seq, T, grads=False)
    with monkeypatch.context() as m:  # our block layout, but causal inside the partial tiles
        m.setattr(core.model, "pack", lambda s, t: (lambda p: p._replace(
            block_mask=document_causal_block_mask(p.doc, p.start, mask_mod=causal)))(
            pack(s, t, block_mask=False)))
        with pytest.raises(AssertionError, match="not close"):
            assert_matches_padded(model, seq, T, grads=False)
    positions = core.model.packed_positions
    with monkeypatch.context() as m:  # positions one further from the row's end
        m.setattr(core.model, "packed_positions", lambda p, max_len: (positions(p, max_len) - 1).clamp(min=0))
        with pytest.raises(AssertionError, match="not close"):
            assert_matches_padded(model, seq, n)
    assert_matches_padded(model, seq, n)  # and, restored, it passes again


# --- the steps --------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def pack_every_batch(monkeypatch):
    """The tests here pack every batch, however full (by default only batches at most half
    full are packed: ``test_only_batches_at_most_half_full_are_packed`` checks the rule)."""
    monkeypatch.setattr(step_module, "PACK_MAX_FILL", 1.0)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = write_synthetic(tmp_path_factory.mktemp("data") / "tiny200", preset="tiny", n_users=200)
    return load_sequences(out)


def _grads(model):
    return {k: p.grad.clone() for k, p in model.named_parameters()}


def test_packed_steps_compute_the_padded_steps_loss_and_gradients(data):
    """Eager packed, graphed-body packed (a bucket of filler slots) and eager padded: one loss,
    one set of gradients (SGD with lr 0, dropout 0)."""
    batch = next(TrainBatches(DeviceSequences.from_data(data, "cpu"), batch_size=50, max_len=20,
                              seed=0).epoch(1))
    results = []
    for kind in ("padded", "packed", "packed body"):
        model = _model(n_items=data.n_items, n_blocks=1)
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        if kind == "packed body":
            rows = [F.pad(t, (0, 0, 0, 14)) for t in (batch.inputs, batch.targets)]
            n_pad = packed_length(batch.positions, 64)
            assert n_pad > batch.positions and n_pad % FLEX_BLOCK == 0
            loss = step_body(model, opt, ce, inputs=rows[0], targets=rows[1], n_pad=n_pad,
                             amp=False, packed=True)
        else:
            loss = _eager_step(model, model, opt, ce, amp=False, pad_to=None, cudagraphs=False,
                               packed=kind == "packed")(batch.inputs, batch.targets, batch.positions)
        results.append((loss, _grads(model)))
    (loss, grads), *others = results
    for other_loss, other_grads in others:
        torch.testing.assert_close(other_loss, loss, rtol=1e-6, atol=0)
        for k in grads:
            torch.testing.assert_close(other_grads[k], grads[k], rtol=1e-5, atol=1e-7, msg=k)


def test_make_step_packs_by_default_and_not_when_told_or_compiled():
    step = lambda model, **s: make_step(model, ce, lr=1e-3, weight_decay=0.0, batch_size=4,
                                        max_len=MAX_LEN, settings=StepSettings(**s))
    assert step(_model()).packed
    assert not step(_model(packed=False)).packed
    assert not step(_model(), compile=True).packed  # a compiled body keeps its (B, L) shape
    assert "packed" not in _model().settings  # how training runs, not what the model is


def test_only_batches_at_most_half_full_are_packed(monkeypatch):
    """Full rows (ml20m-like) gain nothing from packing and measured slower on an H200, so a
    batch whose real positions fill more than half its B x L slots runs the padded body."""
    monkeypatch.setattr(step_module, "PACK_MAX_FILL", 0.5)  # the default
    model = _model(n_blocks=1)
    calls = []
    real_forward = model.forward
    length = lambda pack: None if pack is None else len(pack.index)  # noqa: E731  the Packing's slots
    model.forward = lambda seq, **kw: (calls.append(length(kw.get("pack"))), real_forward(seq, **kw))[1]
    step = _eager_step(model, model, torch.optim.SGD(model.parameters(), lr=0.0), ce, amp=False,
                       pad_to=None, cudagraphs=False, packed=True)
    for fill in (MAX_LEN // 4, MAX_LEN - 1):  # real items per row: a quarter, nearly all
        inputs = torch.zeros(4, MAX_LEN, dtype=torch.int64)
        inputs[:, -fill:] = torch.randint(1, 50, (4, fill))
        targets = torch.zeros_like(inputs)
        targets[:, -fill:] = torch.randint(1, 50, (4, fill))
        step(inputs, targets, 4 * fill)
    assert calls == [4 * (MAX_LEN // 4), None]  # packed into exactly N slots on the CPU, then padded


def test_packed_training_epochs_track_the_padded_ones(data):
    """Two epochs with dropout 0: packed and padded training give the same losses and weights
    up to rounding (summation order differs)."""
    batches = TrainBatches(DeviceSequences.from_data(data, "cpu"), batch_size=64, max_len=20, seed=0)
    results = []
    for packed in (False, True):
        model = _model(n_items=data.n_items, n_blocks=1, packed=packed)
        step = make_step(model, ce, lr=1e-3, weight_decay=0.0, batch_size=64, max_len=20,
                         settings=StepSettings())
        assert step.packed == packed
        losses = [run_epoch(step, batches.epoch(e), device=torch.device("cpu"))[0] for e in (1, 2)]
        results.append((losses, model.item_emb.weight.detach().clone()))
    (padded, w_padded), (packed, w_packed) = results
    assert packed == pytest.approx(padded, rel=1e-5)
    assert ((w_packed - w_padded).norm() / w_padded.norm()).item() < 1e-4


# --- GPU ---------------------------------------------------------------------------------------


@pytest.mark.gpu
@requires_cuda
def test_pack_and_its_block_mask_are_sync_free_on_cuda():
    seq = _batch(LENGTHS[3] * 17, device="cuda")
    T = packed_length(int((seq != 0).sum()))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        p = pack(seq, T)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert p.block_mask is not None
    ref = create_block_mask(document_causal(p.doc), None, None, T, T, device="cuda")
    assert torch.equal(p.block_mask.to_dense(), ref.to_dense())


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize("lengths", LENGTHS, ids=range(len(LENGTHS)))
def test_compiled_flex_model_equals_the_padded_model_on_cuda(lengths, amp):
    """Compiled FlexAttention (the CUDA path) against the padded body: outputs and gradients.
    fp32: 1e-4 (FlexAttention's own fp32 kernel accumulates in another order); bf16 autocast:
    both bodies round to bf16, so they agree to bf16 noise."""
    seq = _batch(lengths * 20, device="cuda")
    T = packed_length(int((seq != 0).sum()), 64)
    model = _model("cuda").train()
    tol = dict(rtol=3e-2, atol=3e-2) if amp else dict(rtol=1e-4, atol=1e-4)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
        ref, ref_grads = _outputs_and_grads(model, seq)
        out, out_grads = _outputs_and_grads(model, seq, T)
    torch.testing.assert_close(out.float(), ref.float(), **tol)
    rel = lambda a, b: ((a - b).norm() / b.norm().clamp(min=1e-12)).item()
    for k in ref_grads:
        assert rel(out_grads[k], ref_grads[k]) < (2e-2 if amp else 1e-4), k


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "bf16"])
def test_graphed_packed_step_follows_the_eager_packed_step(data, amp):
    """Whole-step CUDA graphs with the packed body (block mask built inside the graph) replay
    the eager packed step's losses over two epochs (several buckets, a smaller last batch)."""
    batches = TrainBatches(DeviceSequences.from_data(data, "cuda"), batch_size=64, max_len=20, seed=0)
    results = []
    for graphed in (False, True):
        model = _model("cuda", n_items=data.n_items, n_blocks=1)
        step = make_step(model, ce, lr=1e-3, weight_decay=0.0, batch_size=64, max_len=20,
                         settings=StepSettings(amp=amp, cuda_graph=graphed, graph_min_bucket=16))
        assert step.packed
        losses = [run_epoch(step, batches.epoch(e), device=model.catalog().device)[0] for e in (1, 2)]
        results.append((losses, model.item_emb.weight.detach().clone()))
    (eager, w_eager), (graph, w_graph) = results
    assert graph == pytest.approx(eager, rel=2e-3 if amp else 1e-4)
    assert ((w_graph - w_eager).norm() / w_eager.norm()).item() < (1e-2 if amp else 1e-3)
