"""CCE with a lock-free, split-catalog forward pass: fast when few positions are scored.

Why it exists: cut-cross-entropy's forward kernel merges each tile's log-sum-exp into the
output under one spin lock per block of rows. With few rows (a recommender batch of short
sequences scores ~500 positions) there are only a handful of row blocks, so the
``V / BLOCK_V`` tiles of each (1,600 for 207,649 items) take that lock one after another, and the
forward pass is serialized on a few locks instead of spread over the GPU.

Here each program owns one block of rows and one contiguous slice of the catalog, keeps a
running (max, sum of exp) for its rows over its slice's tiles (an online log-sum-exp, as in
flash attention), and writes one partial LSE per row; ``torch.logsumexp`` over the slices
finishes the job. No locks, no atomics on the LSE. The backward pass is the library's own
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
import triton.language as tl
from cut_cross_entropy.cce_backward import cce_backward_kernel

from core.losses.registry import IGNORE_INDEX
_BLOCK_V = 128
_WAVES = 4  # programs per SM to aim for: enough to hide the tiles' memory latency


@triton.jit
def _split_lse_kernel(
    E, C, PartLSE,
    B, V, D, stride_eb, stride_cv, stride_pb, tiles_per_split,
    BLOCK_B: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Program (row block b, catalog slice s): partial LSE of rows b over the items of slice s."""
    pid_b = tl.program_id(0)
    pid_s = tl.program_id(1)
    offs_b = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    b_mask = offs_b < B
    offs_d = tl.arange(0, BLOCK_D)

    run_max = tl.full((BLOCK_B,), float("-inf"), tl.float32)
    run_sum = tl.zeros((BLOCK_B,), tl.float32)
    for t in range(tiles_per_split):
        offs_v = (pid_s * tiles_per_split + t) * BLOCK_V + tl.arange(0, BLOCK_V)
        v_mask = offs_v < V
        logits = tl.zeros((BLOCK_B, BLOCK_V), tl.float32)
        for d0 in range(0, D, BLOCK_D):
            d_mask = (d0 + offs_d) < D
            e = tl.load(E + offs_b[:, None] * stride_eb + (d0 + offs_d)[None, :],
                        mask=b_mask[:, None] & d_mask[None, :], other=0.0)
            c = tl.load(C + offs_v[None, :] * stride_cv + (d0 + offs_d)[:, None],
                        mask=v_mask[None, :] & d_mask[:, None], other=0.0).to(e.dtype)
            logits = tl.dot(e, c, logits, input_precision=PRECISION)  # (BLOCK_B, BLOCK_V)
        logits = tl.where(v_mask[None, :], logits, float("-inf"))
        new_max = tl.maximum(run_max, tl.max(logits, axis=1))
        # The first tile of a slice always holds items, so new_max is finite from then on.
        run_sum = run_sum * tl.exp(run_max - new_max) + tl.sum(tl.exp(logits - new_max[:, None]), axis=1)
        run_max = new_max
    tl.store(PartLSE + pid_s * stride_pb + offs_b, run_max + tl.log(run_sum), mask=b_mask)


def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4  # the Triton interpreter (tests): a few slices are enough to exercise the merge


def split_lse(e: torch.Tensor, c: torch.Tensor, *, logit_avg: bool = False,
              rows: torch.Tensor | None = None):
    """(lse (N,) fp32, mean logit per item (V,) fp32 or None) of ``e @ c.T`` without (N, V) logits.

    ``e`` (N, D) bf16/fp16/fp32, ``c`` (V, D) any float dtype (cast to ``e.dtype`` per tile).
    ``rows`` (N,) bool: the rows the mean logit runs over (default all), as the library
    averages over non-ignored rows only.
    """
    n, d = e.shape
    v = c.shape[0]
    e, c = e.contiguous(), c.contiguous()
    block_b = 64 if n <= 4096 else 128
    block_d = min(64, max(16, triton.next_power_of_2(d)))
    n_b = triton.cdiv(n, block_b)
    n_tiles = triton.cdiv(v, _BLOCK_V)
    splits = max(1, min(n_tiles, triton.cdiv(_WAVES * _sm_count(e.device), n_b)))
    tiles_per_split = triton.cdiv(n_tiles, splits)
    splits = triton.cdiv(n_tiles, tiles_per_split)  # no slice starts past the catalog's end
    part = torch.empty((splits, n), dtype=torch.float32, device=e.device)
    _split_lse_kernel[(n_b, splits)](
        e, c, part, n, v, d, e.stride(0), c.stride(0), part.stride(0), tiles_per_split,
        BLOCK_B=block_b, BLOCK_V=_BLOCK_V, BLOCK_D=block_d,
        PRECISION="ieee" if e.dtype == torch.float32 else "tf32",
        num_warps=4, num_stages=3,
    )
    lse = torch.logsumexp(part, dim=0) if splits > 1 else part[0]
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
