"""SASRec: shapes, causality, padding invariance, gradients, determinism, precision, compile."""

from __future__ import annotations

import pytest
import torch

from core import model as model_module
from core.model import INIT_BLOCK_ROWS, SASRec, item_table_init

N_ITEMS, DIM, MAX_LEN = 37, 16, 8


def make(seed: int = 0, **kwargs) -> SASRec:
    torch.manual_seed(seed)
    return SASRec(N_ITEMS, dim=DIM, max_len=MAX_LEN, **kwargs)


def batch() -> torch.Tensor:
    """(3, MAX_LEN): a full row, a left-padded row and a row with a single item."""
    return torch.tensor(
        [
            [5, 9, 1, 37, 2, 2, 30, 11],
            [0, 0, 0, 4, 8, 15, 16, 23],
            [0, 0, 0, 0, 0, 0, 0, 7],
        ]
    )


def test_shapes_and_catalog():
    model = make(n_blocks=3, n_heads=2).eval()
    hidden = model(batch())
    assert hidden.shape == (3, MAX_LEN, DIM)
    assert model(batch()[:, -5:]).shape == (3, 5, DIM)  # shorter than max_len is fine
    assert model.catalog().shape == (N_ITEMS, DIM)
    # column i of hidden @ catalog().T is item id i + 1
    torch.testing.assert_close(model.catalog()[6], model.item_emb.weight[7])
    assert model.item_emb.weight.shape == (N_ITEMS + 1, DIM)
    assert torch.isfinite(hidden).all()  # padded positions are meaningless but finite


def test_padding_row_is_zero_at_init():
    assert make().item_emb.weight[0].abs().sum() == 0


def test_item_table_init_of_any_row_range_is_those_rows_of_the_whole_table():
    """Blockwise seeding: a range (inside a block, across block edges, the end) is reproduced
    without the rest; the model's table is that init, row 0 (padding) zero."""
    rows, seed = 2 * INIT_BLOCK_ROWS + 10, 7
    whole = item_table_init(seed, 0, rows, 3)
    assert whole[0].abs().sum() == 0 and whole[1:].std().item() == pytest.approx(0.02, rel=0.05)
    for lo, hi in [(1, 5), (1, INIT_BLOCK_ROWS + 1), (INIT_BLOCK_ROWS - 2, 2 * INIT_BLOCK_ROWS + 3),
                   (2 * INIT_BLOCK_ROWS, rows), (0, 3), (5, 5)]:
        assert torch.equal(item_table_init(seed, lo, hi, 3), whole[lo:hi]), (lo, hi)
    assert not torch.equal(item_table_init(seed + 1, 0, rows, 3), whole)
    torch.manual_seed(0)
    seed = int(torch.randint(2**31, ()))  # the model's draw
    assert torch.equal(make().item_emb.weight, item_table_init(seed, 0, N_ITEMS + 1, DIM))


def test_causality_future_items_do_not_change_the_past():
    model = make().eval()
    seq = batch()
    changed = seq.clone()
    changed[:, 5:] = torch.tensor([3, 1, 4])
    before, after = model(seq), model(changed)
    torch.testing.assert_close(before[:, :5], after[:, :5], rtol=0, atol=0)
    assert not torch.allclose(before[:, 5:], after[:, 5:])


def test_padding_does_not_change_real_positions():
    model = make().eval()
    real = torch.tensor([[4, 8, 15, 16, 23]])
    short = model(real)  # (1, 5, D), no padding at all
    padded = model(torch.cat([torch.zeros(1, 3, dtype=torch.long), real], dim=1))  # (1, 8, D)
    # keys at padding are masked and positions count from the right, so the real part matches
    torch.testing.assert_close(padded[:, 3:], short, rtol=1e-5, atol=1e-5)


def test_padding_mask_matters():
    # A non-zero item in place of the padding must change the outputs: the test above is not vacuous.
    model = make().eval()
    a = model(torch.tensor([[0, 0, 0, 4, 8, 15, 16, 23]]))
    b = model(torch.tensor([[6, 6, 6, 4, 8, 15, 16, 23]]))
    assert not torch.allclose(a[:, -1], b[:, -1], atol=1e-4)


def test_gradient_reaches_item_embedding_not_padding_row():
    model = make()
    hidden = model(batch())[:, -1]  # (3, D) last positions
    loss = torch.nn.functional.cross_entropy(hidden @ model.catalog().T, torch.tensor([0, 5, 36]))
    loss.backward()
    grad = model.item_emb.weight.grad
    assert grad is not None and grad[1:].abs().sum() > 0
    assert grad[0].abs().sum() == 0
    assert model.pos_emb.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.parameters())


def test_deterministic_under_a_seed():
    a, b = make(seed=3), make(seed=3)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(pa, pb, rtol=0, atol=0, msg=name)
    torch.manual_seed(1)
    out_a = a.train()(batch())  # dropout active
    torch.manual_seed(1)
    out_b = b.train()(batch())
    torch.testing.assert_close(out_a, out_b, rtol=0, atol=0)
    assert not torch.equal(make(seed=4).item_emb.weight, a.item_emb.weight)


class _MaskDroppedForOneQuery:
    """torch.nn.functional, but attention ignores its mask for a one-column query (the last-only
    path's): the last column then sees padding keys."""

    def __getattr__(self, name):
        return getattr(torch.nn.functional, name)

    @staticmethod
    def scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=0.0):
        mask = None if q.shape[-2] == 1 else attn_mask
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)


def _residual_from_the_first_column(self, x, mask, *, last=False):
    y = self.attn(self.ln_attn(x), mask, last=last)
    x = (x[:, :1] if last else x) + y
    return x + self.ffn(self.ln_ffn(x))


LAST_ONLY_MUTANTS = {
    "mask dropped for the last column": lambda p: p.setattr(model_module, "F", _MaskDroppedForOneQuery()),
    "residual of the wrong column": lambda p: p.setattr(model_module.Block, "forward", _residual_from_the_first_column),
}


def _last_only_mismatch() -> float:
    """Largest |forward(seq, last=True) - forward(seq)[:, -1]| over models of 0-3 blocks."""
    worst = 0.0
    for n_blocks, n_heads in [(0, 1), (1, 1), (2, 2), (3, 4)]:
        model = make(n_blocks=n_blocks, n_heads=n_heads).eval()
        full = model(batch())[:, -1]
        worst = max(worst, (model(batch(), last=True) - full).abs().max().item())
    return worst


def test_last_column_only_equals_the_last_column_of_the_whole_forward():
    """Evaluation's ``forward(seq, last=True)`` (the last block on one column) against the whole
    forward: equal to fp32 rounding (batch(): rows of 8, 5 and 1 real items)."""
    assert _last_only_mismatch() < 1e-5
    with pytest.raises(ValueError, match="packed"):
        make()(batch(), pack=32, last=True)


@pytest.mark.parametrize("mutant", sorted(LAST_ONLY_MUTANTS))
def test_a_broken_last_column_forward_is_caught(mutant, monkeypatch):
    LAST_ONLY_MUTANTS[mutant](monkeypatch)
    assert _last_only_mismatch() > 1e-3, mutant


def test_bad_arguments():
    with pytest.raises(ValueError, match="divisible"):
        SASRec(N_ITEMS, dim=10, n_heads=3)
    with pytest.raises(ValueError, match="max_len"):
        make()(torch.ones(1, MAX_LEN + 1, dtype=torch.long))
    for bad in (dict(dim=0), dict(n_heads=0), dict(dropout=1.0), dict(n_blocks=-1)):
        with pytest.raises(ValueError, match="SASRec needs"):  # named, not a torch traceback
            SASRec(N_ITEMS, **bad)


def test_bf16_autocast_on_cpu():
    model = make().eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        hidden = model(batch())
        logits = hidden @ model.catalog().T
    assert torch.isfinite(logits.float()).all()
    torch.testing.assert_close(hidden.float(), model(batch()), rtol=0.05, atol=0.05)


@pytest.mark.slow
def test_torch_compile_matches_eager():
    model = make().eval()
    compiled = torch.compile(model)
    torch.testing.assert_close(compiled(batch()), model(batch()), rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_autocast_compiled_backward():
    model = make().cuda().train()
    compiled = torch.compile(model)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        hidden = compiled(batch().cuda())[:, -1]
        logits = hidden @ model.catalog().T
    loss = torch.nn.functional.cross_entropy(logits.float(), torch.tensor([0, 5, 36]).cuda())
    loss.backward()
    assert torch.isfinite(loss) and model.item_emb.weight.grad[1:].abs().sum() > 0
