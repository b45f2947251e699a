"""CCE with a lock-free, split-catalog forward pass: fast when few positions are scored.

Why it exists: cut-cross-entropy's forward kernel merges each tile's log-sum-exp into the
output under one spin lock per block of rows. With few rows (a recommender batch of short
sequences scores ~500 positions) there are only a handful of row blocks, so the
``V / BLOCK_V`` tiles of each (1,600 for 207,649 items) take that lock one after another, and the
forward pass is serialized on a few locks instead of spread over the GPU.

Here each program owns one block of rows and one contiguous slice of the catalog, keeps a
running (max, sum of exp) for its rows over its slice's tiles (an online log-sum-exp, as in
flash attention), and writes one partial LSE per row; ``torch.logsumexp`` over the slices
finishes the job. No locks, no atomics on the LSE. The kernel and its launcher are shared with
``flash_ce`` (core/losses/split_lse.py); this forward takes the head dim 64 at a time and
natural exponentials. The backward pass is the library's own
kernel (``cce_backward_kernel``, gradient filter and vocabulary ordering included), fed with
this forward's LSE and per-item mean logit, so gradients are CCE's.

Targets equal to ``IGNORE_INDEX`` are handled without a host sync: their rows get weight 0
and the mean runs over the others. Checked against a float64 oracle and against the library
path in tests/test_losses_agreement.py (GPU) and, for the Triton forward, under the Triton
interpreter on the CPU (tests/test_cce_split.py).
"""

from __future__ import annotations

import torch
import triton
from cut_cross_entropy.cce_backward import cce_backward_kernel

from core.losses.registry import IGNORE_INDEX
from core.losses.split_lse import split_lse as shared_split_lse

_BLOCK_V = 128


def split_lse(e: torch.Tensor, c: torch.Tensor, *, logit_avg: bool = False,
              rows: torch.Tensor | None = None):
    """(lse (N,) fp32, mean logit per item (V,) fp32 or None) of ``e @ c.T`` without (N, V) logits.

    ``e`` (N, D) bf16/fp16/fp32, ``c`` (V, D) any float dtype (cast to ``e.dtype`` per tile).
    ``rows`` (N,) bool: the rows the mean logit runs over (default all), as the library
    averages over non-ignored rows only.
    """
    n, d = e.shape
    e, c = e.contiguous(), c.contiguous()
    lse = shared_split_lse(e, c, block_n=64 if n <= 4096 else 128, block_v=_BLOCK_V,
                           block_d=min(64, max(16, triton.next_power_of_2(d))), base2=False,
                           num_warps=4, num_stages=3)
    return lse, (mean_logit(e, c, rows) if logit_avg else None)


def mean_logit(e: torch.Tensor, c: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
    """(V,) fp32 mean over ``rows`` of the logits ``e @ c.T``, as one matrix-vector product.

    The mean of the logits is the logit of the mean hidden state, so this costs one pass over
    ``c`` instead of a reduction over every (row, item) pair (which, done inside the LSE
    kernel with atomics, cost 40% of its time at N = 12,800). Only the backward's vocabulary
    ordering uses it.
    """
    w = torch.ones(e.shape[0], device=e.device) if rows is None else rows.float()  # (N,)
    mean_e = (e.float() * w[:, None]).sum(0) / w.sum().clamp(min=1)  # (D,): no host sync
    return c.float() @ mean_e  # (V,)


class _SplitCCE(torch.autograd.Function):
    """Mean NLL over rows with a target; forward here, backward by cut-cross-entropy's kernel."""

    @staticmethod
    def forward(ctx, e, c, targets, filter_eps):
        valid = targets != IGNORE_INDEX  # (N,)
        safe = torch.where(valid, targets, 0)  # any real item: its row's weight is 0
        lse, avg = split_lse(e, c, logit_avg=filter_eps is not None, rows=valid)
        # The target logit as the backward sees it: operands rounded to e's dtype, fp32 sum.
        dot = (e.float() * c.index_select(0, safe).to(e.dtype).float()).sum(-1)  # (N,)
        weight = valid.float() / valid.sum().clamp(min=1)  # (N,): mean over valid rows
        ctx.save_for_backward(e, c, lse, safe, weight, avg)
        ctx.filter_eps = filter_eps
        return ((lse - dot) * weight).sum()

    @staticmethod
    def backward(ctx, grad):
        e, c, lse, safe, weight, avg = ctx.saved_tensors
        order = torch.argsort(avg).to(torch.int32) if avg is not None else None
        # The kernel computes dC only for a ``c`` that requires grad: tell it what autograd needs.
        c = c.detach().requires_grad_(ctx.needs_input_grad[1])
        de, dc = cce_backward_kernel(
            (grad * weight).contiguous(), e, c, lse, None, None,
            ctx.filter_eps, targets=safe, shift=False, vocab_ordering=order, grad_scale=1.0,
        )
        return de, dc, None, None


def split_cce(e: torch.Tensor, c: torch.Tensor, targets: torch.Tensor, *,
              filter_eps: float | None) -> torch.Tensor:
    """Mean CCE loss of ``e`` (N, D) bf16/fp16 against catalog ``c`` (V, D); CUDA only.

    ``filter_eps``: the backward's gradient filter threshold (a number, already resolved from
    "high"/"auto" by the caller) or None for exact gradients.
    """
    if e.dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"split_cce: e must be bf16 or fp16 (CCE's backward kernel), got {e.dtype}")
    return _SplitCCE.apply(e, c, targets.contiguous(), filter_eps)
