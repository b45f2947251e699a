"""core.model.TiedItemTable: the item table's lookup and catalog as one autograd node, so the
table's gradient is built in one buffer (issue 21.3). Checked against autograd's own path
(``forward(seq)`` with ``catalog()``), padded and packed, with broken variants that must fail."""

from __future__ import annotations

import pytest
import torch

from core import model as model_module
from core.losses import ce
from core.model import SASRec, TiedItemTable, table_backed

N_ITEMS, DIM, MAX_LEN = 50, 16, 8


def _batch() -> torch.Tensor:
    """(4, MAX_LEN) left-padded ids with repeats (their row gradients must add up)."""
    seq = torch.tensor([[0, 0, 0, 7, 7, 7, 3, 50],
                        [0, 0, 0, 0, 0, 0, 1, 7],
                        [9, 8, 7, 6, 5, 4, 3, 2],
                        [0, 0, 0, 0, 0, 0, 0, 7]])
    return seq


def _grads(tied: bool, pack: int | None = None, loss_fn=ce, device: str = "cpu") -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = SASRec(N_ITEMS, dim=DIM, max_len=MAX_LEN, n_blocks=1, dropout=0.0).to(device)
    seq = _batch().to(device)
    kw = {} if pack is None else {"pack": pack}
    if tied:
        hidden, catalog = model(seq, with_catalog=True, **kw)
    else:
        hidden, catalog = model(seq, **kw), model.catalog()
    e = hidden.reshape(-1, DIM)
    targets = torch.arange(len(e), device=device) % N_ITEMS
    loss_fn(e, catalog, targets).backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def _table_backed_ce(e, c, targets):
    """ce whose dC comes back as rows 1.. of a (V + 1, D) buffer, as flash_ce hands it back."""

    class Backed(torch.autograd.Function):
        @staticmethod
        def forward(ctx, c):
            return c.view_as(c)

        @staticmethod
        def backward(ctx, grad):
            buf = grad.new_full((grad.shape[0] + 1, grad.shape[1]), float("nan"))  # row 0: garbage
            buf[1:] = grad
            return buf[1:]

    return ce(e, Backed.apply(c), targets)


def _mismatch(**kw) -> float:
    """Largest relative gradient difference, tied vs autograd's path, over every parameter."""
    tied, plain = _grads(True, **kw), _grads(False, **kw)
    return max(((tied[n] - plain[n]).abs().max() / plain[n].abs().max().clamp_min(1e-12)).item() for n in plain)


@pytest.mark.parametrize("pack", [None, 32], ids=["padded", "packed"])
@pytest.mark.parametrize("loss_fn", [ce, _table_backed_ce], ids=["copied_dc", "table_backed_dc"])
def test_tied_gradients_equal_autograds(pack, loss_fn):
    assert _mismatch(pack=pack, loss_fn=loss_fn) < 1e-5
    assert _grads(True, pack=pack, loss_fn=loss_fn)["item_emb.weight"][0].abs().sum() == 0  # padding row


def test_a_table_backed_dc_becomes_the_tables_gradient_without_a_copy():
    weight = torch.randn(N_ITEMS + 1, DIM, requires_grad=True)
    rows, catalog = TiedItemTable.apply(weight, _batch())
    seen = []  # the buffer's address only: holding the buffer would make autograd copy it

    def note(grad):
        buffer = table_backed(grad, N_ITEMS + 1)
        seen.append(None if buffer is None else buffer.data_ptr())

    catalog.register_hook(note)
    _table_backed_ce(rows.reshape(-1, DIM), catalog, torch.arange(32) % N_ITEMS).backward()
    assert seen[0] is not None and weight.grad.data_ptr() == seen[0]  # stolen, not copied
    assert table_backed(torch.zeros(N_ITEMS, DIM), N_ITEMS + 1) is None  # a plain dC is not
    assert table_backed(torch.zeros(N_ITEMS + 1, DIM)[:-1], N_ITEMS + 1) is None  # rows 0.., not 1..


def test_with_catalog_is_refused_where_the_table_is_not_whole():
    model = SASRec(N_ITEMS, dim=DIM, max_len=MAX_LEN, n_blocks=1)
    with pytest.raises(ValueError, match="whole item table"):
        model(_batch(), with_catalog=True, shares=object())


def _overwrite_rows(self, dim, index, source):  # repeated ids keep one row's gradient, not the sum
    return self.index_copy_(dim, index, source)


class _KeepPaddingRow(torch.autograd.Function):  # padding rows' gradients left in row 0
    forward = staticmethod(TiedItemTable.forward)

    @staticmethod
    def backward(ctx, grad_rows, grad_catalog):
        (ids,) = ctx.saved_tensors
        table = grad_catalog.new_zeros(ctx.table_shape)
        table[1:] = grad_catalog
        return table.index_add_(0, ids.reshape(-1), grad_rows.reshape(-1, table.shape[1])), None


class _CatalogGradientDropped(torch.autograd.Function):  # only the lookup's gradient
    forward = staticmethod(TiedItemTable.forward)

    @staticmethod
    def backward(ctx, grad_rows, grad_catalog):
        return TiedItemTable.backward(ctx, grad_rows, None)


MUTANTS = {
    "rows overwritten, not added": lambda p: p.setattr(torch.Tensor, "index_add_", _overwrite_rows),
    "padding row not zeroed": lambda p: p.setattr(model_module, "TiedItemTable", _KeepPaddingRow),
    "catalog gradient dropped": lambda p: p.setattr(model_module, "TiedItemTable", _CatalogGradientDropped),
}


@pytest.mark.parametrize("mutant", sorted(MUTANTS))
def test_broken_variants_are_caught(mutant, monkeypatch):
    MUTANTS[mutant](monkeypatch)
    padding = _grads(True)["item_emb.weight"][0].abs().sum().item()
    assert _mismatch() > 1e-3 or padding > 0, mutant


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("pack", [None, 128], ids=["padded", "packed"])
def test_cuda_tied_table_with_flash_ce_equals_autograds(pack):
    """On the GPU: flash_ce's table-backed dC and the rows added by ``core.table_grad.add_rows_``."""
    from core.losses.flash_ce import flash_ce

    tied, plain = (_grads(t, pack=pack, loss_fn=flash_ce, device="cuda") for t in (True, False))
    for name in plain:
        scale = plain[name].abs().max().clamp_min(1e-12)
        assert ((tied[name] - plain[name]).abs().max() / scale).item() < 1e-5, name
    assert tied["item_emb.weight"][0].abs().sum() == 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_tied_table_backward_reruns_bit_for_bit():
    """Many repeats of few ids (what makes atomic adds reorder): the same bits every time."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 30, (4096,), generator=gen).cuda()
    grad_rows = torch.randn(4096, DIM, generator=gen).cuda()
    grad_catalog = torch.randn(1000, DIM, generator=gen).cuda()
    out = []
    for _ in range(3):
        weight = torch.zeros(1001, DIM, device="cuda", requires_grad=True)
        rows, catalog = TiedItemTable.apply(weight, ids)
        torch.autograd.backward([rows, catalog], [grad_rows, grad_catalog])
        out.append(weight.grad)
    assert torch.equal(out[0], out[1]) and torch.equal(out[0], out[2])


def test_the_step_ties_only_a_plain_whole_table():
    from core.training.step import ties

    model = SASRec(N_ITEMS, dim=DIM, max_len=MAX_LEN, n_blocks=1)
    assert ties(model)
    model.item_emb.max_norm = 1.0  # a lookup TiedItemTable would not reproduce
    assert not ties(model)
    assert not ties(torch.nn.Module())  # a wrapper (DDP) or a model without an item table
