"""What every results file shares: Markdown tables, the environment record, kernel profiles.

Used by ``experiments/report.py``, the benchmarks under ``experiments/bench/`` and
``kernels_bench/``. Files themselves are written through ``core.atomic``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def markdown_table(head: Sequence[str], rows: Iterable[Sequence[str]], *, align: str = "l") -> str:
    """``rows`` of cells under ``head`` as Markdown table lines (no trailing newline).

    ``align``: ``l`` (left) or ``r`` (right, ``---:``), one letter for every column or one per column.
    """
    align = align * len(head) if len(align) == 1 else align
    lines = ["| " + " | ".join(head) + " |", "|" + "".join("---:|" if a == "r" else "---|" for a in align)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines)


def kernel_profile(run_once, *, steps: int, top: int = 25) -> dict:
    """Device time per call of ``run_once()``, kernel by kernel: ``steps`` calls under
    torch.profiler (CUDA activity; kernels replayed from CUDA graphs are traced too), after one
    untraced call. -> {"total_ms", "kernels": [{"kernel", "ms", "calls"} per call, largest
    first, at most ``top``], "other_ms": the rest, "launches": device activities per call}. Device times are exact even when the host
    is the bottleneck; they add up the GPU's busy time, not the wall time."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    run_once()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            run_once()
        torch.cuda.synchronize()
    events = [(e.key, e.self_device_time_total / steps / 1e3, e.count / steps)
              for e in prof.key_averages() if e.self_device_time_total > 0]
    events.sort(key=lambda e: -e[1])
    kernels = [{"kernel": k, "ms": ms, "calls": calls} for k, ms, calls in events[:top]]
    return {"total_ms": sum(e[1] for e in events), "kernels": kernels,
            "other_ms": sum(e[1] for e in events[top:]), "steps": steps,
            "launches": sum(e[2] for e in events)}


def environment(device, *, dtype: str | None = None, seed: int | None = None, **extra) -> dict:
    """What a result was measured with: the "env" record of metrics.json
    (``core.env.environment``: device, library versions, precision, seed), where ``dtype`` and
    ``seed`` appear only when given (a loss-only sweep has several of the one and none of the
    other), then ``extra`` (e.g. ``cce_autotune``)."""
    from core.env import (
        environment as run_environment,  # torch: imported when a record is made
    )

    record = run_environment(device=device, dtype=dtype, seed=seed)
    return {k: v for k, v in record.items() if v is not None or k not in ("dtype", "seed")} | extra
