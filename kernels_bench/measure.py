"""One measuring function shared by every provider: time quantiles and peak extra memory.

On CUDA the time is ``triton.testing.do_bench`` (L2 flushed before every run, CUDA events) and
the memory is the peak of ``torch.cuda.max_memory_allocated`` during one call minus what was
allocated just before it. On a CPU the time is a plain ``time.perf_counter`` loop and the
memory is NaN: there is no allocator statistic to read. Also here: the matmul rate behind the
arithmetic floor, out-of-memory detection and releasing memory between points (the
environment written on every result row is ``experiments.output.environment``).
"""

from __future__ import annotations

import gc
import math
import time
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import torch

QUANTILES = (0.5, 0.2, 0.8)  # median, 20th, 80th percentile, in the order do_bench returns them
MIB = 2**20


@dataclass(frozen=True)
class Measurement:
    """Milliseconds per call (median, 20th, 80th percentile) and peak extra memory in MiB."""

    time_ms: float
    p20_ms: float
    p80_ms: float
    memory_mib: float  # NaN where not measurable (CPU)


def _clear_grads(tensors: Iterable[torch.Tensor]) -> None:
    for t in tensors:
        t.grad = None


def measure(
    fn: Callable[[], object],
    *,
    device: torch.device,
    grad_to_none: tuple[torch.Tensor, ...] = (),
    warmup_ms: float = 10.0,
    rep_ms: float = 50.0,
) -> Measurement:
    """Times ``fn`` and measures the peak memory it adds; exceptions (OOM) propagate.

    Gradients of ``grad_to_none`` are reset before every timed call, so each call allocates
    its gradients afresh and they count in the memory figure, for every provider alike.
    """
    if device.type == "cuda":
        return _measure_cuda(fn, device, tuple(grad_to_none), warmup_ms, rep_ms)
    return _measure_cpu(fn, tuple(grad_to_none), warmup_ms, rep_ms)


def _measure_cuda(fn, device, grads, warmup_ms, rep_ms) -> Measurement:
    import triton.testing

    # Timing first: its calls also compile and autotune, which the memory call must not see.
    median, p20, p80 = triton.testing.do_bench(
        fn, warmup=warmup_ms, rep=rep_ms, grad_to_none=list(grads), quantiles=list(QUANTILES)
    )
    _clear_grads(grads)
    torch.cuda.synchronize(device)
    baseline = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - baseline
    _clear_grads(grads)
    return Measurement(float(median), float(p20), float(p80), peak / MIB)


def _measure_cpu(fn, grads, warmup_ms, rep_ms, min_reps: int = 3, max_reps: int = 100):
    start = time.perf_counter()
    fn()  # first call: compilation
    while (time.perf_counter() - start) * 1e3 < warmup_ms:
        fn()
    times: list[float] = []
    deadline = time.perf_counter() + rep_ms / 1e3
    while len(times) < min_reps or (time.perf_counter() < deadline and len(times) < max_reps):
        _clear_grads(grads)
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    _clear_grads(grads)
    median, p20, p80 = np.quantile(times, QUANTILES)
    return Measurement(float(median), float(p20), float(p80), math.nan)


def matmul_tflops(device: torch.device, dtype: torch.dtype = torch.bfloat16) -> float:
    """Dense matmul rate (TFLOP/s) measured now on ``device``: the arithmetic floor's divisor.

    A large square product on CUDA (close to the card's attainable peak); a small one on a CPU.
    """
    size = 8192 if device.type == "cuda" else 512
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    m = measure(lambda: torch.matmul(a, b), device=device, warmup_ms=25.0, rep_ms=100.0)
    del a, b
    free_memory(device)
    return 2.0 * size**3 / (m.time_ms * 1e-3) / 1e12


def floor_ms(*, n: int, v: int, d: int, mode: str, tflops: float) -> float:
    """Arithmetic floor: the N x V x D matmuls of ``mode`` (2NVD FLOPs each) at ``tflops``.

    The forward has one (logits), the backward two (dE and dC).
    """
    matmuls = {"fw": 1, "bw": 2, "fw-bw": 3}[mode]
    return matmuls * 2.0 * n * v * d / (tflops * 1e12) * 1e3


def is_oom(exc: BaseException) -> bool:
    """True for a CUDA (or CPU allocator) out-of-memory error."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and (
        "out of memory" in text or "not enough memory" in text
    )


def free_memory(device: torch.device, *, collect: bool = False) -> None:
    """Returns cached blocks to the driver so that the next point starts clean.

    ``collect`` also runs the garbage collector, needed after an exception whose traceback
    frames held tensors.
    """
    if collect:
        gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
