"""Plain softmax cross-entropy over materialized (N, V) logits: the baseline every loss is measured against."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from core.losses.registry import IGNORE_INDEX, LossFacts, register


@register(facts=LossFacts(exact=True, sync_free=True, cuda_only=False, catalog_parallel=True))
def ce(e: torch.Tensor, c: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Plain softmax cross-entropy over materialized logits.

    The (N, V) logits are computed in the operands' dtype (bf16 under autocast) and the
    softmax in fp32, which is what autocast does for ``F.cross_entropy``; with fp32 operands
    this is the fp32 reference.
    """
    logits = e @ c.T  # (N, V)
    return F.cross_entropy(logits.float(), targets, ignore_index=IGNORE_INDEX)
