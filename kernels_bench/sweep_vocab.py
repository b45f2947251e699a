"""Loss-only forward/backward sweep over catalog size V: where does CCE beat CE, and by how much?

    python kernels_bench/sweep_vocab.py [--quick] [--inputs random,trained] [--checkpoint PATH]

For every input kind, V and provider (kernels_bench/providers.py) and mode (fw, bw, fw-bw) it
records the median time with 20th/80th percentiles and the peak extra memory
(kernels_bench/measure.py), after checking every provider against a float64 reference at a small
V. An out-of-memory point is recorded as ``oom`` (larger V of that provider and mode are then
``skipped``, as are those whose time, scaled linearly from the last V, would pass ``--max-ms``)
and the sweep goes on; a GPU time below the arithmetic floor is recorded as ``invalid``.
Outputs, in ``runs/kernels_bench/<UTC timestamp>/`` or ``--out``: results.csv (tidy),
correctness.csv, table.md, time.png, memory.png, summary.txt, config.json. Without CUDA the
same command runs a small CPU sweep, which measures no memory: then no memory.png is written
and summary.txt says so.

Progress goes to stderr: a tqdm bar when stderr is a terminal, else one plain line per
(input kind, V), so that a redirected log holds no carriage-return bar; ``--no-progress``: none.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd
import torch
from tqdm import tqdm

from core.atomic import unwritable, write_json, write_text
from core.env import package_version
from core.losses import IGNORE_INDEX
from core.paths import REPO_ROOT
from experiments.output import environment
from kernels_bench import plots
from kernels_bench.report import summarize, sweep_table
from kernels_bench.inputs import INPUT_KINDS, InputError, load_catalog, make_inputs
from kernels_bench.measure import (
    floor_ms,
    free_memory,
    is_oom,
    matmul_tflops,
    measure,
)
from kernels_bench.providers import (
    MODES,
    PROVIDERS,
    check_provider,
    mode_callable,
    unavailable_reason,
)

SEED_CATALOGS = (20_729, 207_649)  # the seed study's item catalogs
DEFAULT_VOCAB = tuple(sorted([2**k for k in range(10, 23)] + list(SEED_CATALOGS)))
QUICK_VOCAB = (2**10, 2**14, 20_729, 2**17, 207_649, 2**20)
CPU_VOCAB, CPU_QUICK_VOCAB = tuple(2**k for k in range(10, 15)), (2**10, 2**12)
CHECK_N, CHECK_V = 256, 1000  # correctness gate shape (D is the sweep's)
COLUMNS = (
    "provider mode metric V N D value p20 p80 status floor_ms inputs dtype target_prob device "
    "torch triton cut_cross_entropy liger_kernel cce_autotune matmul_tflops timestamp note"
).split()


class BenchError(Exception):
    """Bad command-line input: printed as one ``error:`` line, exit status 2, nothing written."""


@dataclass(frozen=True)
class SweepConfig:
    out: Path
    vocab: tuple[int, ...]
    n: int
    dim: int
    inputs: tuple[str, ...]
    providers: tuple[str, ...]
    modes: tuple[str, ...]
    device: str
    checkpoint: str | None = None
    warmup_ms: float = 10.0
    rep_ms: float = 50.0
    seed: int = 0
    target_prob: float = 0.3
    max_ms: float = 2000.0
    progress: bool = True


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", help="output folder (default runs/kernels_bench/<UTC timestamp>)")
    p.add_argument("--vocab", help="comma-separated V list, e.g. 1024,2^20,207649")
    p.add_argument("--n", type=int, help="hidden states N (default 12800; 512 on CPU)")
    p.add_argument("--dim", type=int, default=64, help="embedding size D (default 64)")
    p.add_argument("--inputs", default="random,trained", help="input kinds: random,trained")
    p.add_argument("--providers", help=f"subset of {','.join(PROVIDERS)} (default: all usable)")
    p.add_argument("--modes", help="subset of fw,bw,fw-bw (default all; fw-bw with --quick)")
    p.add_argument("--checkpoint", help="SASRec checkpoint whose item embeddings feed 'trained'")
    p.add_argument("--target-prob", type=float, default=0.3, help="trained stand-in calibration")
    p.add_argument("--quick", action="store_true", help="fewer V, fw-bw only, shorter timing")
    p.add_argument("--warmup-ms", type=float, help="do_bench warmup (default 10; 5 with --quick)")
    p.add_argument("--rep-ms", type=float, help="do_bench repetition (default 50; 20 with --quick)")
    p.add_argument(
        "--max-ms",
        type=float,
        default=2000.0,
        help="skip a provider's larger V once its slowest mode, scaled linearly in V, would "
        "take longer than this per call (default 2000)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="no progress (bar or lines)")
    return p.parse_args(argv)


def _split(text: str, allowed, what: str) -> tuple[str, ...]:
    items = tuple(s.strip() for s in text.split(",") if s.strip())
    bad = [s for s in items if s not in allowed]
    if bad or not items:
        shown = ",".join(bad) or repr(text)
        raise BenchError(f"unknown {what} {shown} (choose from {','.join(allowed)})")
    return items


def _parse_vocab(text: str) -> tuple[int, ...]:
    values = []
    for item in (s.strip() for s in text.split(",") if s.strip()):
        try:
            base, _, exp = item.partition("^")
            values.append(int(base) ** int(exp) if exp else int(item.replace("_", "")))
        except ValueError:
            raise BenchError(f"--vocab: {item!r} is not an integer or 2^k") from None
    if not values or min(values) < 2:
        raise BenchError("--vocab needs catalog sizes of at least 2")
    return tuple(sorted(set(values)))


def build_config(args: argparse.Namespace):
    """Validates the arguments: returns (config, catalog or None, notes); raises BenchError."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cpu = device.type == "cpu"
    if args.vocab:
        vocab = _parse_vocab(args.vocab)
    elif cpu:
        vocab = CPU_QUICK_VOCAB if args.quick else CPU_VOCAB
    else:
        vocab = QUICK_VOCAB if args.quick else DEFAULT_VOCAB
    n = args.n if args.n is not None else (256 if args.quick else 512) if cpu else 256 * 50
    if n < 1 or args.dim < 1:
        raise BenchError("--n and --dim must be positive")
    if not 0.0 < args.target_prob < 1.0:
        raise BenchError("--target-prob must lie strictly between 0 and 1")
    inputs = _split(args.inputs, INPUT_KINDS, "input kind")
    modes = _split(args.modes, MODES, "mode") if args.modes else ("fw-bw",) if args.quick else MODES
    notes, catalog = [], None
    if args.providers:
        providers = _split(args.providers, tuple(PROVIDERS), "provider")
        for name in providers:
            if reason := unavailable_reason(name, device):
                raise BenchError(f"provider {name} cannot run here: {reason}")
    else:
        providers = tuple(p for p in PROVIDERS if not unavailable_reason(p, device))
        skipped = [p for p in PROVIDERS if p not in providers]
        notes += [f"{p}: not run ({unavailable_reason(p, device)})" for p in skipped]
    if args.checkpoint:
        try:
            catalog = load_catalog(args.checkpoint)
        except InputError as exc:
            raise BenchError(str(exc)) from None
        if catalog.shape[1] != args.dim:
            d = catalog.shape[1]
            raise BenchError(f"checkpoint embeddings have D={d}: pass --dim {d}")
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = Path(args.out) if args.out else REPO_ROOT / "runs" / "kernels_bench" / stamp
    if problem := unwritable(out):
        raise BenchError(f"cannot write --out {out}: {problem}")
    if out.exists() and any(out.iterdir()):
        raise BenchError(f"output folder {out} exists and is not empty")
    default_warmup, default_rep = (5.0, 20.0) if args.quick else (10.0, 50.0)
    cfg = SweepConfig(
        out=out,
        vocab=vocab,
        n=n,
        dim=args.dim,
        inputs=inputs,
        providers=providers,
        modes=modes,
        device=str(device),
        checkpoint=args.checkpoint,
        warmup_ms=args.warmup_ms if args.warmup_ms is not None else default_warmup,
        rep_ms=args.rep_ms if args.rep_ms is not None else default_rep,
        seed=args.seed,
        target_prob=args.target_prob,
        max_ms=args.max_ms,
        progress=not args.no_progress,
    )
    return cfg, catalog, notes


def _inputs(kind: str, cfg: SweepConfig, catalog, *, n: int, v: int):
    return make_inputs(
        kind,
        n=n,
        v=v,
        d=cfg.dim,
        device=torch.device(cfg.device),
        seed=cfg.seed,
        catalog=catalog,
        target_prob=cfg.target_prob,
    )


def run_checks(cfg: SweepConfig, catalog) -> list[dict]:
    """Every provider against float64 at V=1000, N=256 (one target in 8 ignored), per input kind."""
    results = []
    for kind in cfg.inputs:
        b = _inputs(kind, cfg, catalog, n=CHECK_N, v=CHECK_V)
        targets = b.targets.clone()
        targets[::8] = IGNORE_INDEX
        for name in cfg.providers:
            results.append({"inputs": kind, **asdict(check_provider(name, b.e, b.c, targets))})
            free_memory(torch.device(cfg.device), collect=True)
    return results


def _run_point(name: str, mode: str, b, cfg: SweepConfig):
    """(status, Measurement or None, note) for one provider and mode on inputs ``b``.

    Its tensors (the leaves and, for bw, the retained graph) die with this frame.
    """
    try:
        setup = PROVIDERS[name].setup(b.e, b.c, b.targets)
        fn = mode_callable(setup, mode)
        m = measure(
            fn,
            device=torch.device(cfg.device),
            grad_to_none=setup.leaves,
            warmup_ms=cfg.warmup_ms,
            rep_ms=cfg.rep_ms,
        )
        return "ok", m, ""
    except Exception as exc:  # recorded in the CSV; the sweep goes on
        if is_oom(exc):
            return "oom", None, "out of memory"
        if mode == "bw" and "donated buffer" in str(exc):
            # torch.compile'd backwards free their saved buffers, so they cannot run twice.
            return "skipped", None, "compiled backward cannot retain_graph; see fw-bw"
        return "error", None, f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}"


def _point_rows(base: dict, m, note: str, floor: float, cpu: bool) -> list[dict]:
    """The time row and the memory row of one point."""
    nan = math.nan
    t50, t20, t80 = (m.time_ms, m.p20_ms, m.p80_ms) if m else (nan, nan, nan)
    mem = m.memory_mib if m else nan
    mem_note = note or ("not measured on CPU" if cpu else "")
    return [
        dict(base, metric="time_ms", value=t50, p20=t20, p80=t80, floor_ms=floor, note=note),
        dict(base, metric="memory_mib", value=mem, p20=nan, p80=nan, floor_ms=nan, note=mem_note),
    ]


def projected_ms(
    last: dict[tuple[str, str, str], tuple[int, float]], kind: str, name: str, v: int
) -> tuple[float, int]:
    """(projected median ms at catalog size ``v``, the V it is scaled from) for provider ``name``.

    ``last`` maps (input kind, provider, mode) to the last (V, median ms) measured. Time grows
    about linearly in V, so each mode's last time is scaled by v / V; the slowest mode decides
    for all (bw's untimed forward costs a full fw). (0.0, 0) when nothing was measured yet.
    """
    scaled = [(t * v / v0, v0) for (k, p, _), (v0, t) in last.items() if (k, p) == (kind, name)]
    return max(scaled, default=(0.0, 0))


def run_sweep(cfg: SweepConfig, catalog, env: dict, *, on_block=None) -> list[dict]:
    """Every point as two tidy rows; ``on_block(rows)`` runs after each (input kind, V)."""
    device = torch.device(cfg.device)
    tflops = matmul_tflops(device)
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    rows: list[dict] = []
    # Keyed by (kind, provider, mode): why larger V are skipped; the last (V, median ms) measured.
    skip: dict[tuple[str, str, str], str] = {}
    last: dict[tuple[str, str, str], tuple[int, float]] = {}
    total = len(cfg.inputs) * len(cfg.vocab) * len(cfg.providers) * len(cfg.modes)
    # A bar on a terminal only: redirected, its redraws become one long line of '\r'.
    lines = cfg.progress and not sys.stderr.isatty()
    bar = tqdm(total=total, disable=not cfg.progress or lines, dynamic_ncols=True, desc="sweep")
    done = 0
    for kind in cfg.inputs:
        for v in cfg.vocab:
            bar.set_postfix_str(f"{kind} V={v:,} making inputs")
            try:
                b = _inputs(kind, cfg, catalog, n=cfg.n, v=v)
            except Exception as exc:
                if not is_oom(exc):
                    raise
                b = None
                free_memory(device, collect=True)
            for name in cfg.providers:
                for mode in cfg.modes:
                    bar.set_postfix_str(f"{kind} V={v:,} {name} {mode}")
                    key = (kind, name, mode)
                    cols = PROVIDERS[name].logit_columns or v  # the arithmetic floor's V
                    projected, from_v = projected_ms(last, kind, name, v)
                    if b is None:
                        status, m, note = "oom", None, "inputs do not fit"
                    elif key in skip:
                        status, m, note = "skipped", None, skip[key]
                    elif projected > cfg.max_ms:
                        status, m, note = "skipped", None, (
                            f"projected {projected:.0f} ms > --max-ms {cfg.max_ms:g} "
                            f"(from V={from_v})"
                        )
                        skip[key] = note
                    else:
                        status, m, note = _run_point(name, mode, b, cfg)
                        floor = floor_ms(n=cfg.n, v=cols, d=cfg.dim, mode=mode, tflops=tflops)
                        if status == "ok" and device.type == "cuda" and m.time_ms < floor:
                            # Faster than the matmuls it must do: the timed call skipped work
                            # (seen with a compiled backward re-run under retain_graph).
                            status, m, note = "invalid", None, (
                                f"measured {m.time_ms:.3g} ms < arithmetic floor {floor:.3g} ms"
                            )
                        # After an exception, traceback cycles may still hold tensors.
                        free_memory(device, collect=status != "ok")
                    if status == "oom":
                        skip.setdefault(key, f"out of memory at V={v}")
                    elif status == "skipped":
                        skip.setdefault(key, note)
                    elif status in ("error", "invalid"):
                        tqdm.write(f"{kind} V={v} {name} {mode}: {note}")
                    elif status == "ok":
                        last[key] = (v, m.time_ms)
                    base = {
                        "provider": name,
                        "mode": mode,
                        "V": v,
                        "N": cfg.n,
                        "D": cfg.dim,
                        "status": status,
                        "inputs": kind,
                        "dtype": str(PROVIDERS[name].dtype).removeprefix("torch."),
                        "target_prob": b.target_prob if b is not None else math.nan,
                        **env,
                        "matmul_tflops": tflops,
                        "timestamp": stamp,
                    }
                    floor = floor_ms(n=cfg.n, v=cols, d=cfg.dim, mode=mode, tflops=tflops)
                    rows += _point_rows(base, m, note, floor, device.type == "cpu")
                    bar.update()
                    done += 1
            if lines:
                print(f"sweep: {kind} inputs, V={v:,} done ({done}/{total} points)",
                      file=sys.stderr, flush=True)
            b = None
            free_memory(device, collect=True)
            if on_block is not None:
                on_block(rows)
    bar.close()
    return rows


def _report_checks(cfg: SweepConfig, checks: pd.DataFrame) -> tuple[str, ...]:
    """Prints the correctness gate's verdicts; returns the providers that passed everywhere."""
    failed = checks[~checks["passed"]] if len(checks) else checks
    for r in failed.itertuples():
        print(
            f"{r.provider} [{r.inputs} inputs] failed the correctness check and is excluded: "
            f"loss {r.loss_err:.2e}, dE {r.grad_e_err:.2e}, dC {r.grad_c_err:.2e} "
            f"(tolerances {r.tol_loss:g}, {r.tol_grad:g}) {r.error}".rstrip()
        )
    passing = tuple(p for p in cfg.providers if p not in set(failed.get("provider", [])))
    print(
        f"correctness vs float64 (V={CHECK_V}, N={CHECK_N}, D={cfg.dim}): "
        f"{len(passing)}/{len(cfg.providers)} providers pass"
    )
    return passing


def main(argv: list[str] | None = None) -> int:
    try:
        cfg, catalog, notes = build_config(parse_args(argv))
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    device = torch.device(cfg.device)
    if device.type == "cpu":
        print(
            f"No CUDA device: small CPU sweep (V up to {max(cfg.vocab):,}, N={cfg.n}); CCE runs "
            "its CPU reference path, memory is not measured, timings say nothing about GPUs."
        )
    for note in notes:
        print(note)
    # the record of every row; CSV columns list what they keep of it
    env = environment(device, liger_kernel=package_version("liger-kernel") or "",
                      cce_autotune=os.environ.get("CCE_AUTOTUNE", ""))
    # Written under <out>.partial and renamed once complete: an interrupted run is never
    # mistaken for a finished one, and its rows so far survive.
    partial = cfg.out.with_name(cfg.out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    config = {**asdict(cfg), "out": str(cfg.out), **env}
    write_json(config, partial / "config.json")

    checks = pd.DataFrame(run_checks(cfg, catalog))
    write_text(checks.to_csv(index=False), partial / "correctness.csv")
    cfg = replace(cfg, providers=_report_checks(cfg, checks))

    def save(rows: list[dict]) -> None:
        write_text(pd.DataFrame(rows, columns=COLUMNS).to_csv(index=False), partial / "results.csv")

    save(run_sweep(cfg, catalog, env, on_block=save))
    df = pd.read_csv(partial / "results.csv")
    summary = summarize(df) if len(df) else "no points were measured"
    write_text(sweep_table(df) if len(df) else summary + "\n", partial / "table.md")
    if not plots.memory_measured(df):
        summary += "\n" + plots.MEMORY_NOT_PLOTTED
    write_text(summary + "\n", partial / "summary.txt")
    plots.make_plots(partial / "results.csv", partial)
    if cfg.out.exists():
        cfg.out.rmdir()  # empty: build_config refuses a non-empty one
    partial.rename(cfg.out)
    print(summary)
    print(f"outputs: {cfg.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
