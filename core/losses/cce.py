"""Apple's Cut Cross-Entropy (cut-cross-entropy), with the project's split forward pass on CUDA.

cut_cross_entropy (and with it triton) is imported on the first call, not at import time, so
``core`` imports and trains on machines without triton (macOS, CPU-only installs).
"""

from __future__ import annotations

import logging
import math

import torch

from core.losses.registry import IGNORE_INDEX, LossFacts, register, settings_label, warn_once

log = logging.getLogger(__name__)


def autocast_operands(e: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Casts fp32 operands to the autocast dtype: the Triton kernel is not autocast-aware."""
    if torch.is_autocast_enabled(e.device.type):
        dtype = torch.get_autocast_dtype(e.device.type)
        return e.to(dtype), c.to(dtype)
    return e, c


def _name(settings: dict) -> str:
    """``cce`` (library filter), ``cce_exact`` (no filter), else the settings that differ."""
    base = "cce_exact" if settings["filter_eps"] is None else "cce"
    defaults = {"filter_eps": settings["filter_eps"] if base == "cce_exact" else "high", "forward": "split"}
    return settings_label(base, settings, defaults)


def _facts(settings: dict) -> LossFacts:
    """Exact without the gradient filter; the library's forward syncs once per call (it finds
    the ignored targets on the host); only ``cce_exact`` may become the catalog-parallel CE."""
    exact, split = settings["filter_eps"] is None, settings["forward"] == "split"
    return LossFacts(exact=exact, sync_free=split, cuda_only=True, catalog_parallel=exact and split,
                     kernels="cut_cross_entropy")


def _check(settings: dict, n_items: int | None = None) -> None:
    """Refuses a ``filter_eps`` or ``forward`` the kernels would not take (see ``cce``)."""
    eps = settings["filter_eps"]
    number = isinstance(eps, (int, float)) and not isinstance(eps, bool) and math.isfinite(eps) and eps >= 0
    if not (eps is None or number or (isinstance(eps, str) and eps in ("high", "auto"))):
        raise ValueError(f"cce.filter_eps must be None, 'high', 'auto' or a number >= 0, got {eps!r}")
    if settings["forward"] not in ("split", "library"):
        raise ValueError(f"cce.forward must be 'split' or 'library', got {settings['forward']!r}")


def _stand_in(settings: dict) -> str:
    """Off CUDA: ``cce_reference`` (the package's torch_compile reference, no gradient filter),
    or ``ce`` where cut_cross_entropy cannot be imported (no triton)."""
    try:
        import cut_cross_entropy  # noqa: F401
    except ImportError:
        return "ce"
    return "cce_reference"


@register(name=_name, facts=_facts, labels={"cce": {"filter_eps": "high"}, "cce_exact": {"filter_eps": None}},
          stand_in=_stand_in, check=_check)
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
    - ``"split"``: ``core.losses.kernels.cce_split`` (lock-free, split over the catalog; no host sync). Much
      faster when few positions are scored against a large catalog (short sequences).
    - ``"library"``: ``cut_cross_entropy.linear_cross_entropy`` as published (one host sync
      per call to find the ignored targets).
    """
    _check({"filter_eps": filter_eps, "forward": forward})
    if isinstance(filter_eps, int):
        filter_eps = float(filter_eps)  # the kernels take a float
    if e.is_cuda and forward == "split":
        from cut_cross_entropy.utils import _handle_eps

        from core.losses.kernels.cce_split import split_cce

        # Only e is cast: the kernels cast catalog tiles as they load them.
        e = autocast_operands(e, e)[0]
        return split_cce(e, c, targets, filter_eps=_handle_eps(filter_eps, e.dtype))
    try:
        from cut_cross_entropy import linear_cross_entropy
    except ImportError:  # no triton (macOS, CPU-only installs): the same loss, materialized
        from core.losses.ce import ce

        warn_once(log, "cce: cut_cross_entropy cannot be imported here (no triton?); running plain "
                   "softmax cross-entropy instead (exact gradients, materialized logits)")
        return ce(*autocast_operands(e, c), targets)

    e, c = autocast_operands(e, c)
    if e.is_cuda:
        # Keyword arguments only: the PyPI release's positional order differs from the repository's.
        return linear_cross_entropy(
            e=e, c=c, targets=targets, ignore_index=IGNORE_INDEX, filter_eps=filter_eps, impl="cce"
        )
    warn_once(log, "cce: no CUDA device, running cut_cross_entropy's torch_compile reference "
               "implementation (exact gradients, materialized logits) instead of the CCE kernel")
    return linear_cross_entropy(
        e=e, c=c, targets=targets, ignore_index=IGNORE_INDEX, impl="torch_compile"
    )
