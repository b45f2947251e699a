"""Benchmark inputs for the loss: hidden states ``e`` (N, D), catalog ``c`` (V, D), targets (N,).

Two kinds, because the speed of CCE's gradient filter depends on how peaked the softmax is:

- ``random``: an untrained head. ``e`` ~ N(0, 1), ``c`` ~ U(-1/sqrt(D), 1/sqrt(D)) (the default
  ``nn.Linear`` initialisation, as in Liger-Kernel's benchmarks), targets uniform in [0, V).
  Logits have a standard deviation of about 0.58, so the softmax is nearly flat (every entry
  about 1/V) and the filter can skip almost every block.
- ``trained``: hidden states aligned with their targets, as after training. The catalog is a real
  SASRec item embedding when a checkpoint is given (row 0, the padding item, dropped; rows tiled or
  truncated to reach V), else a stand-in ``c`` ~ N(0, I/D) (rows of norm about 1). Each hidden state
  is ``e_i = scale * (c[t_i] + noise * z_i)`` with ``z_i`` Gaussian with the per-dimension spread of
  ``c``, so that ``e_i`` points near its target (cosine about 0.9 for ``noise=0.5``). ``scale`` is
  found by bisection so that the median softmax probability of the target is ``target_prob``
  (default 0.3, within the 0.1-0.5 of a trained recommender), at every V. The other logits then
  spread with a standard deviation of about 1.4 / 1.7 / 2.2 at V = 20,729 / 207,649 / 2^20, and
  about 400 / 77 / 54 items per row keep a probability above bf16's filter threshold
  (eps/32 = 2.4e-4), scattered over the catalog: nearly every tile of the backward holds one,
  so the filter skips little. That tail has no structure (a real model's has: similar and
  popular items), so the stand-in is the filter's unfavourable case. Targets are uniform.

Everything is generated in float32 on the target device; providers cast to their own dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from core.checkpoint import load_torch
from core.integrity import CorruptFile

INPUT_KINDS = ("random", "trained")
EMBEDDING_KEY = "item_emb.weight"


class InputError(ValueError):
    """A checkpoint or input request that cannot be used (reported as one line by the CLI)."""


@dataclass(frozen=True)
class BenchInputs:
    """One benchmark point's operands (float32, on the benchmark device)."""

    kind: str
    e: torch.Tensor  # (N, D)
    c: torch.Tensor  # (V, D)
    targets: torch.Tensor  # (N,) int64 in [0, V)
    target_prob: float  # median softmax probability of the target (float32 logits)


def load_catalog(path: str | Path) -> torch.Tensor:
    """Item embeddings (n_items, D) float32 from a training checkpoint, padding row 0 dropped."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"checkpoint not found: {path}")
    try:  # our own checkpoint (it holds optimizer and RNG state too), checked against its digest
        state = load_torch(path, map_location="cpu", fix="point --checkpoint at an intact best.pt")
    except CorruptFile as exc:
        raise InputError(str(exc)) from None
    except Exception as exc:  # noqa: BLE001  an intact file that is not a checkpoint of ours
        raise InputError(f"cannot read checkpoint {path}: {exc}") from None
    try:
        weight = state["model"][EMBEDDING_KEY]
    except (KeyError, TypeError, IndexError):
        raise InputError(
            f"{path} has no ['model']['{EMBEDDING_KEY}'] (expected a checkpoint of core.training)"
        ) from None
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or weight.shape[0] < 2:
        raise InputError(f"{path}: {EMBEDDING_KEY} must be a 2-D tensor with n_items + 1 rows")
    return weight[1:].detach().float().contiguous()


def fit_catalog(catalog: torch.Tensor, v: int) -> torch.Tensor:
    """Tiles or truncates a catalog (n_items, D) to exactly ``v`` rows."""
    reps = math.ceil(v / catalog.shape[0])
    return catalog.repeat(reps, 1)[:v].contiguous()


def random_inputs(*, n: int, v: int, d: int, device: torch.device, seed: int) -> BenchInputs:
    """An untrained head: see the module docstring."""
    gen = torch.Generator(device=device).manual_seed(seed)
    e = torch.randn(n, d, device=device, generator=gen)  # (N, D)
    bound = 1.0 / math.sqrt(d)
    c = torch.rand(v, d, device=device, generator=gen).mul_(2 * bound).sub_(bound)  # (V, D)
    targets = torch.randint(0, v, (n,), device=device, generator=gen)
    return BenchInputs("random", e, c, targets, _median_target_prob(e, c, targets))


def trained_inputs(
    *,
    n: int,
    v: int,
    d: int,
    device: torch.device,
    seed: int,
    catalog: torch.Tensor | None = None,
    target_prob: float = 0.3,
    noise: float = 0.5,
) -> BenchInputs:
    """Hidden states aligned with their targets: see the module docstring."""
    gen = torch.Generator(device=device).manual_seed(seed)
    if catalog is None:
        c = torch.randn(v, d, device=device, generator=gen).div_(math.sqrt(d))  # (V, D)
    else:
        if catalog.shape[1] != d:
            raise InputError(f"checkpoint embeddings have D={catalog.shape[1]}, not {d}")
        c = fit_catalog(catalog, v).to(device)
    targets = torch.randint(0, v, (n,), device=device, generator=gen)
    spread = c.std(dim=0)  # (D,) per-dimension spread of the catalog
    z = torch.randn(n, d, device=device, generator=gen) * spread
    direction = c[targets] + noise * z  # (N, D)
    scale = _calibrate_scale(direction, c, targets, target_prob)
    e = direction.mul_(scale)
    return BenchInputs("trained", e, c, targets, _median_target_prob(e, c, targets))


def make_inputs(kind: str, *, catalog: torch.Tensor | None = None, target_prob: float = 0.3,
                **shape) -> BenchInputs:
    """Dispatches on ``kind`` (one of ``INPUT_KINDS``); ``shape`` is n, v, d, device, seed."""
    if kind == "random":
        return random_inputs(**shape)
    if kind == "trained":
        return trained_inputs(**shape, catalog=catalog, target_prob=target_prob)
    raise InputError(f"unknown input kind {kind!r} (choose from {', '.join(INPUT_KINDS)})")


_SAMPLE_ROWS = 64  # rows used to calibrate and report the target probability
_CHUNK = 1 << 20  # catalog rows per logits chunk: bounds the calibration's memory at large V


def _sample_logits(e: torch.Tensor, c: torch.Tensor, targets: torch.Tensor):
    """(target logits (S,), all logits (S, V)) for the first rows, in float32."""
    rows = min(_SAMPLE_ROWS, e.shape[0])
    e_s = e[:rows].float()
    logits = torch.cat([e_s @ c[i : i + _CHUNK].float().T for i in range(0, c.shape[0], _CHUNK)], 1)
    return logits.gather(1, targets[:rows, None]).squeeze(1), logits


def _median_target_prob(e: torch.Tensor, c: torch.Tensor, targets: torch.Tensor) -> float:
    target, logits = _sample_logits(e, c, targets)
    return float((target - logits.logsumexp(1)).exp().median())


def _calibrate_scale(
    direction: torch.Tensor, c: torch.Tensor, targets: torch.Tensor, target_prob: float
) -> float:
    """The scale s for which softmax(s * direction @ c.T) gives the target ``target_prob``.

    Bisection on log s: the median target probability rises with s while the target logit is
    the largest of its row, which the alignment makes true for nearly every row.
    """
    target, logits = _sample_logits(direction, c, targets)

    def prob(scale: float) -> float:
        return float((scale * target - (scale * logits).logsumexp(1)).exp().median())

    lo, hi = math.log(1e-3), math.log(1e4)
    for _ in range(24):  # brackets log s to within 1e-6
        mid = 0.5 * (lo + hi)
        if prob(math.exp(mid)) < target_prob:
            lo = mid
        else:
            hi = mid
    return math.exp(0.5 * (lo + hi))
