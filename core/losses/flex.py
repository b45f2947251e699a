"""``flex_ce``: PyTorch's FlexAttention as the catalog loss, the off-the-shelf baseline.

The loss is attention-shaped (hidden states E (N, D) as queries, the catalog C (V, D) as keys),
and ``flex_attention(E, C, V=zeros, scale=1, return_lse=True)`` returns each row's log-sum-exp
of ``E C^T`` without materializing (N, V), differentiably, so ``mean(lse - target logit)`` is the
full-catalog cross-entropy (measured on an H200, torch 2.11: loss equal to CE, gradients within bf16 error). No custom kernel: what a user gets from PyTorch alone,
and what ``flash_ce`` has to beat at every shape.

The value tensor is a dummy (V, 16) of zeros (the smallest head dim FlexAttention takes): only
the LSE is used. FlexAttention is compiled with ``dynamic=False``, as measured, so each new
(N, V) shape compiles again (and torch.compile gives up after a few shapes): rows are padded
with ignored ones up to a size bucket (``row_bucket``, at most 12.5% more rows), so a training
run whose steps score varying numbers of positions compiles a handful of times, not every step.
The kernel does not split the catalog, so it is slow with few rows (6.24 ms at 560 x 207,649
on an H200, 10.0 ms at 12,800 x 207,649).

CUDA only: off CUDA it falls back to plain ``ce`` (materialized logits, same loss), logged once,
as ``cce`` and ``flash_ce`` do, so every config runs anywhere.
"""

from __future__ import annotations

import logging

import torch

from core.losses.cce import autocast_operands
from core.losses.registry import IGNORE_INDEX, LossFacts, register, warn_once

log = logging.getLogger(__name__)

_compiled = None  # torch.compile(flex_attention), built on the first CUDA call


def row_bucket(n: int) -> int:
    """``n`` rounded up to a multiple of 2**(bits(n) - 4): 8 sizes per octave, <= 12.5% padding."""
    step = 1 << max(4, n.bit_length() - 4)
    return -(-n // step) * step


def _flex():
    global _compiled
    if _compiled is None:
        from torch.nn.attention.flex_attention import flex_attention

        _compiled = torch.compile(flex_attention, dynamic=False)
    return _compiled


# sync_free: never checked under CUDA-graph capture (a compiled kernel, recompiled per shape).
@register(facts=LossFacts(exact=True, sync_free=False, cuda_only=True, catalog_parallel=False),
          stand_in=lambda settings: "ce")
def flex_ce(e: torch.Tensor, c: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean NLL over non-ignored targets from FlexAttention's log-sum-exp (see the module doc).

    Operands are cast like ``ce``'s under autocast; ``c`` takes ``e``'s dtype (FlexAttention
    wants one dtype). With no scored target the loss is NaN and the gradients zero, as ``ce``'s.
    """
    e, c = autocast_operands(e, c)
    if not e.is_cuda:
        from core.losses.ce import ce

        warn_once(log, "flex_ce: no CUDA device, running plain softmax cross-entropy instead "
                   "(same loss, materialized logits)")
        return ce(e, c, targets)
    if e.shape[0] == 0:  # nothing to attend from: ce's NaN loss and zero gradients
        from core.losses.ce import ce

        return ce(e, c.to(e.dtype), targets)
    c = c.to(e.dtype)
    n = e.shape[0]
    pad = row_bucket(n) - n
    if pad:  # zero hidden states with ignored targets: no loss, no gradient
        e = torch.cat([e, e.new_zeros(pad, e.shape[1])])
        targets = torch.cat([targets, targets.new_full((pad,), IGNORE_INDEX)])
    values = torch.zeros(1, 1, c.shape[0], 16, device=c.device, dtype=c.dtype)  # (1, 1, V, 16)
    _, lse = _flex()(e[None, None], c[None, None], values, scale=1.0, return_lse=True)
    lse = lse[0, 0].float()  # (N,) natural-log LSE of e @ c.T
    valid = targets != IGNORE_INDEX  # (N,)
    safe = torch.where(valid, targets, 0)
    dot = (e.float() * c.index_select(0, safe).float()).sum(-1)  # (N,) target logits
    return torch.where(valid, lse - dot, 0.0).sum() / valid.sum()  # 0 / 0 = NaN, as ce
