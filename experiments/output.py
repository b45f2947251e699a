"""What every results file shares: Markdown tables and the environment record.

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


def environment(device, *, dtype: str | None = None, seed: int | None = None, **extra) -> dict:
    """What a result was measured with: the "env" record of metrics.json
    (``core.env.environment``: device, library versions, precision, seed), where ``dtype`` and
    ``seed`` appear only when given (a loss-only sweep has several of the one and none of the
    other), then ``extra`` (e.g. ``cce_autotune``)."""
    from core.env import environment as run_environment  # torch: imported when a record is made

    record = run_environment(device=device, dtype=dtype, seed=seed)
    return {k: v for k, v in record.items() if v is not None or k not in ("dtype", "seed")} | extra
