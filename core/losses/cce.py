"""Full-catalog losses behind one signature: ``loss(e, c, targets) -> scalar``.

Notation follows the CCE paper: ``e`` (N, D) hidden states, ``c`` (V, D) catalog (item)
embeddings, ``targets`` (N,) item ids in [0, V) or ``IGNORE_INDEX``. Every loss is the mean
negative log-likelihood over non-ignored targets, so swapping losses is one gin line
(``train.loss_fn = @cce``) and never a string switch inside the model.
"""

from __future__ import annotations

import logging

import gin
import torch
import torch.nn.functional as F
from cut_cross_entropy import linear_cross_entropy
from cut_cross_entropy.utils import _handle_eps

from core.cce_split import split_cce

IGNORE_INDEX = -100  # the value cut_cross_entropy and F.cross_entropy both skip

log = logging.getLogger(__name__)
_warned_reference = False


@gin.configurable
def ce(e: torch.Tensor, c: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Plain softmax cross-entropy over materialized logits.

    The (N, V) logits are computed in the operands' dtype (bf16 under autocast) and the
    softmax in fp32, which is what autocast does for ``F.cross_entropy``; with fp32 operands
    this is the fp32 reference.
    """
    logits = e @ c.T  # (N, V)
    return F.cross_entropy(logits.float(), targets, ignore_index=IGNORE_INDEX)


def autocast_operands(e: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Casts fp32 operands to the autocast dtype: the Triton kernel is not autocast-aware."""
    if torch.is_autocast_enabled(e.device.type):
        dtype = torch.get_autocast_dtype(e.device.type)
        return e.to(dtype), c.to(dtype)
    return e, c


@gin.configurable
def cce(
    e: torch.Tensor,
    c: torch.Tensor,
    targets: torch.Tensor,
    *,
    filter_eps: float | str | None = "high",
    forward: str = "split",
) -> torch.Tensor:
    """Cut Cross-Entropy (Wijmans et al., 2025): the loss without materializing (N, V) logits.

    ``filter_eps`` is CCE's gradient filter: softmax entries below it are skipped in the
    backward pass. ``"high"`` (the library's default) is eps(dtype) / 32; ``None`` gives exact
    gradients. On CUDA this runs Apple's Triton kernels; elsewhere it runs the package's own
    ``torch_compile`` reference implementation (no filter), logged once, so that every config
    runs on any machine.

    ``forward`` picks the CUDA forward pass; the backward pass is the library's kernel either way:
    - ``"split"``: ``core.cce_split`` (lock-free, split over the catalog; no host sync). Much
      faster when few positions are scored against a large catalog (short sequences).
    - ``"library"``: ``cut_cross_entropy.linear_cross_entropy`` as published (one host sync
      per call to find the ignored targets).
    """
    if forward not in ("split", "library"):
        raise ValueError(f"cce: forward must be 'split' or 'library', not {forward!r}")
    if e.is_cuda and forward == "split":
        # Only e is cast: the kernels cast catalog tiles as they load them.
        e = autocast_operands(e, e)[0]
        return split_cce(e, c, targets, filter_eps=_handle_eps(filter_eps, e.dtype))
    e, c = autocast_operands(e, c)
    if e.is_cuda:
        # Keyword arguments only: the PyPI release's positional order differs from the repository's.
        return linear_cross_entropy(
            e=e, c=c, targets=targets, ignore_index=IGNORE_INDEX, filter_eps=filter_eps, impl="cce"
        )
    global _warned_reference
    if not _warned_reference:
        log.warning(
            "cce: no CUDA device, running cut_cross_entropy's torch_compile reference "
            "implementation (exact gradients, materialized logits) instead of the CCE kernel"
        )
        _warned_reference = True
    return linear_cross_entropy(
        e=e, c=c, targets=targets, ignore_index=IGNORE_INDEX, impl="torch_compile"
    )
