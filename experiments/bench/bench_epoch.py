"""Epoch-time benchmark: full training epochs, CE and CCE one after the other in one process.

    python experiments/bench/bench_epoch.py --preset ml20m-like,beauty-like \\
        --variants base,static,static+compile,static+cudagraphs --losses ce,cce

Each (dataset, variant, loss) run builds a fresh SASRec (seed's settings, same seed), times
``--epochs`` full training epochs through ``core.step``'s ``make_step``/``run_epoch`` (what train() runs)
(GPU synchronized, evaluation excluded), then a separate instrumented pass of
``--sample-steps`` steps gives the per-step breakdown (CUDA events at phase boundaries; the host
clock on the CPU), and on CUDA a few steps under ``torch.cuda.set_sync_debug_mode`` count the
device->host syncs per step and where they happen. Variants are ``+``-joined tokens:

- ``base``: the pre-issue-6 step (boolean-mask gather: one sync per step), eager model;
- ``static``: the compact block sized from the host (``train_batch_positions``): no sync;
- ``compile`` / ``autotune`` / ``cudagraphs``: the model body under torch.compile with mode
  "default" / "max-autotune-no-cudagraphs" / "reduce-overhead" (CUDA graphs), last batch padded;
- ``graph``: the whole step (forward, loss, backward, Adam) captured as CUDA graphs, one per
  bucket of scored positions (``core.graph_step``; implies ``static``; eager on a CPU). The
  breakdown then shows the whole replay under "model ms".
- ``cce_direct``: CCE through the library's own forward and autograd function with
  ``valids=None``, skipping the ``nonzero()`` (a sync) that ``linear_cross_entropy`` runs on
  every call. Without it, CCE rows run ``core.losses.cce`` (its default split forward). CCE rows
  only: for CE the variant runs without it (once, labelled so: "static+cce_direct" -> "static").

Columns: ``epoch_s`` is the mean over the timed epochs after the first; with ``--epochs 1``
it is that one epoch, which is steady state only after ``--warmup-steps`` (untimed steps of an
extra epoch, its last batch included, that absorb compilation and autotuning; ``warmup_s``).
Writes results.csv, results.md and results.json (rows, environment, arguments, sync sites)
into ``--out`` after every run, and prints the Markdown table last.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
import traceback
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from cut_cross_entropy.cce import CCEParams, LinearCrossEntropyFunction
from cut_cross_entropy.utils import _handle_eps

from core import checkpoint
from core.data.batching import DeviceSequences, n_train_batches, train_batch_positions, train_batches
from core.env import resolve_device
from core.losses import autocast_operands, cce, ce
from core.model import SASRec
from core.graph_step import MIN_BUCKET, make_graph_step
from core.step import compile_model, make_optimizer, make_step, run_epoch
from experiments.bench.common import (
    GIB,
    BenchError,
    count_syncs,
    default_out,
    environment,
    error_row,
    fmt,
    load_datasets,
    mark,
    phase_ms,
    split_list,
    sync,
    utc_now,
)

TOKENS = {"base", "static", "compile", "autotune", "cudagraphs", "cce_direct", "graph"}
COMPILE_TOKENS = {"compile": "default", "autotune": "max-autotune-no-cudagraphs",
                  "cudagraphs": "reduce-overhead"}
PHASES = ("batch", "model", "loss", "optimizer")
COLUMNS = ["dataset", "loss", "variant", "epoch_s", "first_epoch_s", "warmup_s", "steps_per_s",
           "positions_per_s", "peak_gib", "batch_ms", "model_ms", "loss_ms", "optimizer_ms",
           "step_ms", "host_step_ms", "syncs_per_step", "train_loss", "n_users", "n_items",
           "steps_per_epoch", "positions_per_epoch", "epochs", "error"]


def cce_direct(e: torch.Tensor, c: torch.Tensor, targets: torch.Tensor, *,
               filter_eps: float | str | None = "high") -> torch.Tensor:
    """``core.losses.cce`` without the library's per-call ``nonzero()`` (one device sync).

    ``linear_cross_entropy`` finds the non-ignored targets with ``nonzero()`` and, when there
    are none to drop, passes ``valids=None`` on; the compact block never holds an ignored
    target, so this calls the same autograd function with ``valids=None`` directly: the same
    kernels and numbers, no sync. Proposed for core/losses.py if it measures faster.
    """
    if not e.is_cuda:
        return cce(e, c, targets, filter_eps=filter_eps)
    e, c = autocast_operands(e, c)  # the Triton kernel is not autocast-aware
    params = CCEParams(targets=targets.contiguous(), valids=None, softcap=None, reduction="mean",
                       filter_eps=_handle_eps(filter_eps, e.dtype), shift=False,
                       batch_shape=targets.size())
    return LinearCrossEntropyFunction.apply(e.contiguous(), c, params)


def cce_autotune() -> bool:
    """Whether cut-cross-entropy autotunes its tiles (env CCE_AUTOTUNE=1, read at its import)."""
    from cut_cross_entropy import tl_autotune

    return bool(tl_autotune._AUTOTUNE)


def parse_variant(variant: str) -> dict:
    """``"static+cudagraphs"`` -> {"static": True, "mode": "reduce-overhead", "cce_direct": False}."""
    tokens = variant.split("+")
    unknown = set(tokens) - TOKENS
    if unknown or not variant or ("base" in tokens and len(tokens) > 1):
        raise BenchError(f"bad variant {variant!r}: '+'-join tokens of {sorted(TOKENS)} "
                         "('base' stands alone)")
    modes = [COMPILE_TOKENS[t] for t in tokens if t in COMPILE_TOKENS]
    if len(modes) > 1:
        raise BenchError(f"bad variant {variant!r}: at most one of {sorted(COMPILE_TOKENS)}")
    if "graph" in tokens and (modes or "cce_direct" in tokens):
        raise BenchError(f"bad variant {variant!r}: 'graph' captures the whole eager step; it "
                         "takes neither a compile mode nor cce_direct (the library path cannot "
                         "take padded, ignored slots)")
    return {"static": "static" in tokens or "graph" in tokens, "mode": modes[0] if modes else None,
            "cce_direct": "cce_direct" in tokens, "graph": "graph" in tokens}


def effective_variant(variant: str) -> str:
    """The variant without ``cce_direct`` (what a CE row runs): "static+cce_direct" -> "static"."""
    return "+".join(t for t in variant.split("+") if t != "cce_direct") or "base"


def _epoch_positions(data, static: bool, **batching) -> list[int] | None:
    return train_batch_positions(data, **batching) if static else None


def _batches(data, seqs, *, static: bool, epoch: int, **batching):
    """(inputs, targets, positions or None) of epochs ``epoch``, ``epoch + 1``, ... without end."""
    while True:
        positions = _epoch_positions(data, static, epoch=epoch, **batching)
        for i, (inputs, targets) in enumerate(train_batches(seqs, epoch=epoch, **batching)):
            yield inputs, targets, None if positions is None else positions[i]
        epoch += 1


def breakdown(step, batches, *, device, sample_steps: int, skip_steps: int = 3) -> dict:
    """Mean ms per phase over ``sample_steps`` instrumented steps (after ``skip_steps``).

    Each step starts on an idle device, so on CUDA a phase's event time is what the device
    spent on it, launch gaps included; ``host_step_ms`` is the host's time to issue the step.
    """
    sums = defaultdict(float)
    for i in range(skip_steps + sample_steps):
        stamps = []
        sync(device)
        mark(stamps, device, "start")
        inputs, targets, positions = next(batches)
        mark(stamps, device, "batch")
        step(inputs, targets, positions, mark=lambda name: mark(stamps, device, name))
        sync(device)
        if i < skip_steps:
            continue
        for name, ms in phase_ms(stamps):
            sums[{"model_forward": "model", "model_backward": "model"}.get(name, name)] += ms
        sums["host"] += (stamps[-1][2] - stamps[0][2]) * 1e3
    out = {f"{p}_ms": sums[p] / sample_steps for p in PHASES}
    out["step_ms"] = sum(out[f"{p}_ms"] for p in PHASES)
    out["host_step_ms"] = sums["host"] / sample_steps
    return out


def bench_one(data, seqs, *, name: str, loss: str, variant: str, args, device) -> dict:
    """One (dataset, loss, variant) run -> a row of COLUMNS (plus ``sync_sites``)."""
    v = parse_variant(variant)
    label = f"{variant} (CCE_AUTOTUNE)" if loss == "cce" and cce_autotune() else variant
    if v["graph"] and args.graph_min_bucket != MIN_BUCKET:
        label += f" (min bucket {args.graph_min_bucket})"
    row = {"dataset": name, "loss": loss, "variant": label, "n_users": int(data.n_users),
           "n_items": int(data.n_items), "epochs": args.epochs, "error": None}
    torch.compiler.reset()  # every run compiles (and pays for it) from a clean state
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    torch.manual_seed(args.seed)
    model = SASRec(n_items=data.n_items, max_len=args.max_len).to(device)
    loss_fn = {"ce": ce, "cce": cce_direct if v["cce_direct"] else cce}[loss]
    graphed = v["graph"] and device.type == "cuda"
    optimizer = make_optimizer(model, lr=args.lr, weight_decay=0.0, capturable=graphed)
    if graphed:
        step = make_graph_step(model=model, optimizer=optimizer, loss_fn=loss_fn, amp=True,
                               batch_size=args.batch_size, max_len=args.max_len,
                               min_bucket=args.graph_min_bucket)
    else:  # "graph" on a CPU: the eager static step (there are no CUDA graphs to capture)
        step = make_step(model=model, forward=compile_model(model, v["mode"] or False),
                         optimizer=optimizer, loss_fn=loss_fn, amp=device.type == "cuda",
                         pad_to=args.batch_size if v["mode"] else None,
                         cudagraphs=v["mode"] == "reduce-overhead")
    batching = dict(batch_size=args.batch_size, max_len=args.max_len, seed=args.seed)
    n_batches = n_train_batches(seqs, batch_size=args.batch_size)
    positions_per_epoch = sum(train_batch_positions(data, epoch=1, **batching))
    row.update(steps_per_epoch=n_batches, positions_per_epoch=positions_per_epoch)

    # Warm-up: untimed steps of epoch 0 (its last, smaller batch too) take compilation,
    # CUDA-graph recording and Triton autotuning out of the timed epochs.
    sync(device)
    start = time.perf_counter()
    if args.warmup_steps:
        warm = _batches(data, seqs, static=v["static"], epoch=0, **batching)
        for i in range(n_batches):
            batch = next(warm)
            if i < args.warmup_steps or i == n_batches - 1:
                step(*batch)
    sync(device)
    row["warmup_s"] = time.perf_counter() - start if args.warmup_steps else None

    times = []
    for epoch in range(1, args.epochs + 1):
        sync(device)
        start = time.perf_counter()
        positions = _epoch_positions(data, v["static"], epoch=epoch, **batching)
        train_loss, _ = run_epoch(step=step, seqs=seqs, epoch=epoch, positions=positions, **batching)
        sync(device)
        times.append(time.perf_counter() - start)
    epoch_s = float(np.mean(times[1:])) if len(times) > 1 else times[0]
    row.update(first_epoch_s=times[0], epoch_s=epoch_s, steps_per_s=n_batches / epoch_s,
               positions_per_s=positions_per_epoch / epoch_s, train_loss=train_loss,
               peak_gib=torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else None)

    # Not part of the timed epochs: the breakdown and the sync count, on later epochs' batches.
    later = _batches(data, seqs, static=v["static"], epoch=args.epochs + 1, **batching)
    row.update(breakdown(step, later, device=device, sample_steps=args.sample_steps))
    row["syncs_per_step"], row["sync_sites"] = (None, [])
    if device.type == "cuda":
        row["syncs_per_step"], row["sync_sites"] = count_syncs(lambda: step(*next(later)), times=5)
    return row


# --- output, command line ----------------------------------------------------------


def markdown(rows: list[dict], env: dict) -> str:
    """The results table (the breakdown in mean ms per step of the instrumented pass)."""
    head = ["dataset", "loss", "variant", "epoch s", "first s", "warm-up s", "steps/s",
            "positions/s", "peak GiB", "batch ms", "model ms", "loss ms", "optim ms", "step ms",
            "host ms", "syncs/step"]
    keys = [("dataset", 0), ("loss", 0), ("variant", 0), ("epoch_s", 2), ("first_epoch_s", 2),
            ("warmup_s", 2), ("steps_per_s", 1), ("positions_per_s", 0), ("peak_gib", 2),
            ("batch_ms", 2), ("model_ms", 2), ("loss_ms", 2), ("optimizer_ms", 2),
            ("step_ms", 2), ("host_step_ms", 2), ("syncs_per_step", 1)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        if row.get("error"):
            cells = [row["dataset"], row["loss"], row["variant"], "error: " + row["error"].replace("|", "/")]
            cells += [""] * (len(head) - len(cells))
        else:
            cells = [fmt(row.get(k), d) for k, d in keys]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"{env['device']}; torch {env['torch']}, triton {env['triton']}, "
                 f"cut-cross-entropy {env['cut_cross_entropy']}"
                 f"{' with CCE_AUTOTUNE=1' if env.get('cce_autotune') else ''}; {env['dtype']}; "
                 f"seed {env['seed']}. "
                 "Breakdown: mean ms per step of a separate instrumented pass (each step from an "
                 "idle device; model = forward + backward of the body, loss = compaction + loss "
                 "forward + backward; host = time to issue the step).")
    return "\n".join(lines) + "\n"


def write_outputs(out: Path, rows: list[dict], env: dict, args, notes: list[str]) -> str:
    """results.csv / .md / .json, rewritten whole after every run; returns the Markdown."""
    out.mkdir(parents=True, exist_ok=True)
    table = markdown(rows, env)
    frame = pd.DataFrame([{k: r.get(k) for k in COLUMNS} for r in rows], columns=COLUMNS)
    checkpoint.write_text(frame.to_csv(index=False), out / "results.csv")
    checkpoint.write_text(table + "".join(f"\n{n}\n" for n in notes), out / "results.md")
    env = {**env, "finished_utc": utc_now()}  # read by report.py
    checkpoint.write_json({"env": env, "args": vars(args), "notes": notes, "rows": rows},
                          out / "results.json")
    return table


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", type=split_list, default=[],
                        help="synthetic presets, comma-separated (e.g. ml20m-like,beauty-like)")
    parser.add_argument("--gin", action="append", default=[],
                        help="a data config (e.g. gin/data/ml20m_like.gin); repeatable")
    parser.add_argument("--losses", type=split_list, default=["ce", "cce"])
    parser.add_argument("--variants", type=split_list, default=["base", "static"])
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs (first = compile)")
    parser.add_argument("--warmup-steps", type=int, default=0,
                        help="untimed steps before the timed epochs (then --epochs 1 is steady)")
    parser.add_argument("--sample-steps", type=int, default=50, help="steps of the breakdown")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--max-len", type=int, default=50)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-users", type=int, default=None,
                        help="override the presets' number of users (quick CPU runs)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--cache-dir", default="data/cache", help="where presets are written once")
    parser.add_argument("--graph-min-bucket", type=int, default=MIN_BUCKET,
                        help="'graph' variant: smallest size step of the compact block (fewer, "
                             "larger buckets = fewer graphs, more padding)")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="start no new run after this many seconds (the rest is reported skipped)")
    parser.add_argument("--out", default=None, help="default runs/bench_epoch/<UTC time>")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Runs every (dataset, variant, loss), writes the outputs, prints the table last."""
    args = _parse_args(argv)
    try:
        for variant in args.variants:
            parse_variant(variant)
        if not set(args.losses) <= {"ce", "cce"} or not args.losses:
            raise BenchError(f"--losses must be ce and/or cce, got {','.join(args.losses)}")
        if min(args.epochs, args.batch_size, args.max_len, args.sample_steps, args.graph_min_bucket) < 1 or args.warmup_steps < 0:
            raise BenchError("--epochs, --batch-size, --max-len, --sample-steps and --graph-min-bucket must be >= 1")
        if not args.preset and not args.gin:
            raise BenchError("give --preset NAME[,NAME] and/or --gin DATA_CONFIG")
        device = resolve_device(args.device)
        datasets = load_datasets(args)
    except BenchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if device.type != "cuda":
        print("note: no CUDA device: CPU timings (fp32, CCE's reference implementation) only "
              "check that the benchmark runs", file=sys.stderr)

    out = Path(args.out) if args.out else default_out("bench_epoch")
    env = environment(device=device, dtype="bfloat16" if device.type == "cuda" else "float32",
                      seed=args.seed)
    env["cce_autotune"] = cce_autotune()
    rows, notes, began = [], [], time.perf_counter()
    for name, data in datasets:
        seqs = DeviceSequences.from_data(data, device)
        done = set()
        for requested in args.variants:
            for loss in args.losses:
                # cce_direct changes the CCE call only: a CE row runs the variant without it, once.
                variant = requested if loss == "cce" else effective_variant(requested)
                if (loss, variant) in done:
                    continue
                done.add((loss, variant))
                if args.budget_s is not None and time.perf_counter() - began > args.budget_s:
                    notes.append(f"skipped (over --budget-s): {name} {loss} {variant}")
                    continue
                print(f"[{time.perf_counter() - began:6.0f} s] {name} {loss} {variant}", file=sys.stderr)
                try:
                    row = bench_one(data, seqs, name=name, loss=loss, variant=variant, args=args,
                                    device=device)
                except Exception as err:  # one failing variant must not cost the others
                    traceback.print_exc()
                    row = error_row(err, dataset=name, loss=loss, variant=variant)
                rows.append(row)
                write_outputs(out, rows, env, args, notes)
        del seqs
    table = write_outputs(out, rows, env, args, notes)
    print(f"wrote {out}/results.csv, results.md, results.json", file=sys.stderr)
    print(table + "".join(f"{n}\n" for n in notes), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
