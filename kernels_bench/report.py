"""The Markdown table and the printed summary of a sweep, made from its results.csv rows.

Both use the headline mode: the fw-bw step (a training step of the loss) when it was swept.
"""

from __future__ import annotations

import math

import pandas as pd

from experiments.output import markdown_table


def headline_mode(modes) -> str:
    """fw-bw when swept, else the last mode swept."""
    modes = list(modes)
    return "fw-bw" if "fw-bw" in modes else modes[-1]


def _cell(time_row, mem_row) -> str:
    if time_row is None:
        return "-"
    if time_row.status != "ok":
        return "OOM" if time_row.status == "oom" else time_row.status
    text = f"{time_row.value:.3g} ms"
    if mem_row is not None and not math.isnan(mem_row.value):
        text += f" / {mem_row.value:,.0f} MiB"
    return text


def sweep_table(df: pd.DataFrame) -> str:
    """Per input kind: time and peak extra memory per V (rows) and provider (columns)."""
    mode = headline_mode(df["mode"].unique())
    sub = df[df["mode"] == mode]
    providers = list(dict.fromkeys(sub["provider"]))
    first = sub.iloc[0]
    lines = [
        f"Loss only, {mode}, N={first.N:,}, D={first.D}, on {first.device}: median time / peak "
        "extra memory (gradients included). Floor: the step's N x V x D matmuls at "
        f"{first.matmul_tflops:.3g} TFLOP/s, a bf16 matmul rate measured in the same run.",
    ]
    for kind, part in sub.groupby("inputs", sort=False):
        lines += ["", f"**{kind} inputs**", ""]
        cells = []
        for v, point in part.groupby("V"):
            get = {(r.provider, r.metric): r for r in point.itertuples()}
            floor = point[point.metric == "time_ms"].floor_ms.iloc[0]
            cells.append([f"{v:,}", f"{floor:.3g} ms",
                          *(_cell(get.get((p, "time_ms")), get.get((p, "memory_mib"))) for p in providers)])
        lines.append(markdown_table(["V", "floor", *providers], cells, align="r"))
    return "\n".join(lines) + "\n"


def crossover(status: pd.DataFrame, time: pd.DataFrame, fast: str, slow: str):
    """(V from which ``fast`` wins at every larger V, first V where it wins); None when none.

    ``fast`` wins at V when it ran and ``slow`` was slower or ran out of memory; a V where
    either errored counts neither way.
    """
    known = []
    for v in status.index:
        s_fast, s_slow = status.at[v, fast], status.at[v, slow]
        if s_fast != "ok" or s_slow not in ("ok", "oom", "skipped"):
            continue
        known.append((v, s_slow != "ok" or bool(time.at[v, fast] < time.at[v, slow])))
    from_v = next((v for i, (v, _) in enumerate(known) if all(w for _, w in known[i:])), None)
    first = next((v for v, w in known if w), None)
    return from_v, first


def summarize(df: pd.DataFrame, *, fast: str = "cce", slow: str = "ce_bf16") -> str:
    """Crossover V of ``fast`` over ``slow``, memory ratios slow/fast per V, largest V run."""
    mode = headline_mode(df["mode"].unique())
    sub = df[df["mode"] == mode]
    lines = [f"Summary ({mode}, N={sub.N.iloc[0]:,}, D={sub.D.iloc[0]}, {sub.device.iloc[0]}):"]
    for kind, part in sub.groupby("inputs", sort=False):

        def table(metric: str, values: str) -> pd.DataFrame:
            rows = part[part.metric == metric]
            return rows.pivot(index="V", columns="provider", values=values)

        time, status = table("time_ms", "value"), table("time_ms", "status")
        mem = table("memory_mib", "value")
        if fast in status and slow in status:
            from_v, first = crossover(status, time, fast, slow)
            text = f"from V={from_v:,} on" if from_v is not None else "not from any V on"
            if first is not None and first != from_v:
                text += f" (first at V={first:,})"
            lines.append(f"[{kind}] {fast} faster than {slow}: {text}")
            ratios = [
                f"{v:,}: {mem.at[v, slow] / mem.at[v, fast]:.3g}x"
                for v in mem.index
                if status.at[v, fast] == status.at[v, slow] == "ok" and mem.at[v, fast] > 0
            ]
            lines.append(
                f"[{kind}] memory {slow}/{fast}: " + (", ".join(ratios) or "n/a (not measured)")
            )
        else:
            lines.append(f"[{kind}] {fast} vs {slow}: not both in this sweep")
        fits = []
        for p in dict.fromkeys(part.provider):
            ok = status.index[status[p] == "ok"]
            fits.append(f"{p} {max(ok):,}" if len(ok) else f"{p} none")
        lines.append(f"[{kind}] largest V that ran: " + ", ".join(fits))
    return "\n".join(lines)
