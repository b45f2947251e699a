"""Epoch-time benchmark: full training epochs of the configs training runs, variant by variant.

    python experiments/bench/bench_epoch.py --gin gin/ml20m_like_ce.gin --gin gin/ml20m_like_cce.gin \
        --variants base,static,static+compile,static+cudagraphs,graph

Each ``--gin`` file is an experiment config as ``experiments/run.py`` takes it (data, model,
loss, ``train.*`` settings; ``--gin_bindings`` apply to all of them, e.g. ``"train.device =
'cpu'"`` or ``"dataset.synthetic_overrides = {'n_users': 1000}"``). For each (config, variant)
it builds the run with ``core.training.loop.build`` (what ``train`` builds: same model, step,
batches and seed), times ``--epochs`` full training epochs through ``run_epoch`` (GPU
synchronized, evaluation excluded), then a separate instrumented pass of ``--sample-steps``
steps gives the per-step breakdown (CUDA events at phase boundaries; the host clock on the
CPU), and on CUDA a few steps under ``torch.cuda.set_sync_debug_mode`` count the device->host
syncs per step and where they happen. Variants are ``+``-joined tokens that set the step
(``core.training.step.StepSettings``) instead of the config's ``train.compile`` /
``train.cuda_graph``:

- ``base``: the boolean-mask gather of the compact block (one sync per step), eager model;
- ``static``: the compact block sized from the host's position counts: no sync (what
  ``train`` runs by default);
- ``compile`` / ``autotune`` / ``cudagraphs``: the model body under torch.compile with mode
  "default" / "max-autotune-no-cudagraphs" / "reduce-overhead" (CUDA graphs), last batch padded;
- ``graph``: the whole step (forward, loss, backward, Adam) captured as CUDA graphs, one per
  bucket of scored positions (``train.cuda_graph``; eager on a CPU). The breakdown then shows
  the whole replay under "model ms".

Columns: ``epoch_s`` is the mean over the timed epochs after the first; with ``--epochs 1``
it is that one epoch, which is steady state only after ``--warmup-steps`` (untimed steps of an
extra epoch, its last batch included, that absorb compilation and autotuning; ``warmup_s``).
The loss column is the bound loss's registry name. Writes results.csv, results.md and
results.json (rows, environment, arguments, sync sites) into ``--out`` after every run, and
prints the Markdown table last.
"""

from __future__ import annotations

import argparse
import gc
import inspect
import sys
import time
import traceback
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import gin
import numpy as np
import torch

from core.data.shards import DataFormatError
from core.dataset_config import DataMissingError, dataset
from core.losses import loss_name
from core.training.loop import _device, build, train, train_configurable
from core.training.step import COMPILE_MODES, MIN_BUCKET, StepSettings, run_epoch
from experiments.bench.common import (GIB, REPO_ROOT, BenchError, count_syncs, default_out,
    environment, error_row, mark, markdown_table, phase_ms, split_list, sync, write_results)

TOKENS = {"base", "static", "compile", "autotune", "cudagraphs", "graph"}
COMPILE_TOKENS = {"compile": "default", "autotune": "max-autotune-no-cudagraphs",
                  "cudagraphs": "reduce-overhead"}
assert set(COMPILE_TOKENS.values()) <= set(COMPILE_MODES)
PHASES = ("batch", "model", "loss", "optimizer")
COLUMNS = ["dataset", "loss", "variant", "epoch_s", "first_epoch_s", "warmup_s", "steps_per_s",
           "positions_per_s", "peak_gib", "batch_ms", "model_ms", "loss_ms", "optimizer_ms",
           "step_ms", "host_step_ms", "syncs_per_step", "train_loss", "n_users", "n_items",
           "steps_per_epoch", "positions_per_epoch", "epochs", "error"]
# train's keywords that build the run (the rest: schedule, evaluation, run folder)
BUILD_KEYS = ("model_fn", "loss_fn", "batch_size", "max_len", "lr", "weight_decay", "seed")


def cce_autotune() -> bool:
    """Whether cut-cross-entropy autotunes its tiles (env CCE_AUTOTUNE=1, read at its import)."""
    try:
        from cut_cross_entropy import tl_autotune
    except ImportError:  # no triton (a CPU-only install): nothing to tune
        return False
    return bool(tl_autotune._AUTOTUNE)


def parse_variant(variant: str, *, amp: bool = True, graph_min_bucket: int = MIN_BUCKET) -> StepSettings:
    """``"static+cudagraphs"`` -> StepSettings(compile="reduce-overhead"); raises BenchError."""
    tokens = variant.split("+")
    unknown = set(tokens) - TOKENS
    if unknown or not variant or ("base" in tokens and len(tokens) > 1):
        raise BenchError(f"bad variant {variant!r}: '+'-join tokens of {sorted(TOKENS)} "
                         "('base' stands alone)")
    modes = [COMPILE_TOKENS[t] for t in tokens if t in COMPILE_TOKENS]
    if len(modes) > 1:
        raise BenchError(f"bad variant {variant!r}: at most one of {sorted(COMPILE_TOKENS)}")
    if "graph" in tokens and modes:
        raise BenchError(f"bad variant {variant!r}: 'graph' captures the whole eager step; it "
                         "takes no compile mode")
    return StepSettings(amp=amp, compile=modes[0] if modes else False, cuda_graph="graph" in tokens,
                        graph_min_bucket=graph_min_bucket, host_positions="base" not in tokens)


@dataclass
class Config:
    """One ``--gin`` config, checked: its dataset and the ``train`` settings that build a run."""

    path: str
    name: str
    data: object  # SequenceData
    device: torch.device


def _train_settings() -> dict:
    """``train``'s keywords as the parsed gin config sets them (defaults where it does not)."""
    defaults = {k: p.default for k, p in inspect.signature(train).parameters.items()
                if p.default is not inspect.Parameter.empty}
    return {**defaults, **gin.get_bindings(train_configurable)}


def _parse(path: str, bindings: list[str]) -> None:
    gin.clear_config()
    try:
        gin.parse_config_files_and_bindings([path], bindings, skip_unknown=False)
    except (ValueError, OSError, SyntaxError, KeyError, TypeError) as err:
        raise BenchError(f"bad gin config {path}: {' '.join(str(err).split())}") from err


def load_configs(paths: list[str], bindings: list[str]) -> list[Config]:
    """Parses every config and loads its data before any run: bad input fails up front."""
    out = []
    for path in paths:
        if not Path(path).exists() and not (REPO_ROOT / path).exists():
            raise BenchError(f"bad gin config {path}: no such file")
        _parse(path, bindings)
        try:
            ds = dataset()
            device = _device(_train_settings()["device"])
        except (DataMissingError, DataFormatError) as err:
            raise BenchError(str(err).splitlines()[0]) from err
        except (ValueError, TypeError) as err:
            raise BenchError(f"bad gin config {path}: {str(err).splitlines()[0]}") from err
        out.append(Config(path, ds.name, ds.data, device))
    gin.clear_config()
    return out


def _endless(batches, epoch: int):
    """The batches of epochs ``epoch``, ``epoch + 1``, ... without end."""
    while True:
        yield from batches.epoch(epoch)
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
        batch = next(batches)
        mark(stamps, device, "batch")
        step(batch.inputs, batch.targets, batch.positions, mark=lambda name: mark(stamps, device, name))
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


def bench_one(config: Config, *, variant: str, args) -> dict:
    """One (config, variant) run -> a row of COLUMNS (plus ``sync_sites``); gin holds the config."""
    settings, data, device = _train_settings(), config.data, config.device
    step_settings = parse_variant(variant, amp=settings["amp"], graph_min_bucket=args.graph_min_bucket)
    loss = loss_name(settings["loss_fn"])
    label = f"{variant} (CCE_AUTOTUNE)" if loss.startswith("cce") and cce_autotune() else variant
    if step_settings.cuda_graph and args.graph_min_bucket != MIN_BUCKET:
        label += f" (min bucket {args.graph_min_bucket})"
    row = {"dataset": config.name, "loss": loss, "variant": label, "n_users": int(data.n_users),
           "n_items": int(data.n_items), "epochs": args.epochs, "error": None}
    torch.compiler.reset()  # every run compiles (and pays for it) from a clean state
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    run = build(data, device=device, step=step_settings, **{k: settings[k] for k in BUILD_KEYS})
    step, batches = run.step, run.batches
    row.update(steps_per_epoch=len(batches), positions_per_epoch=batches.positions_per_epoch)

    # Warm-up: untimed steps of epoch 0 (its last, smaller batch too) take compilation,
    # CUDA-graph recording and Triton autotuning out of the timed epochs.
    sync(device)
    start = time.perf_counter()
    if args.warmup_steps:
        for i, batch in enumerate(batches.epoch(0)):
            if i < args.warmup_steps or i == len(batches) - 1:
                step(*batch)
    sync(device)
    row["warmup_s"] = time.perf_counter() - start if args.warmup_steps else None

    times = []
    for epoch in range(1, args.epochs + 1):
        sync(device)
        start = time.perf_counter()
        train_loss, _ = run_epoch(step, batches.epoch(epoch), device=device)
        sync(device)
        times.append(time.perf_counter() - start)
    epoch_s = float(np.mean(times[1:])) if len(times) > 1 else times[0]
    row.update(first_epoch_s=times[0], epoch_s=epoch_s, steps_per_s=len(batches) / epoch_s,
               positions_per_s=batches.positions_per_epoch / epoch_s, train_loss=train_loss,
               peak_gib=torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else None)

    # Not part of the timed epochs: the breakdown and the sync count, on later epochs' batches.
    later = _endless(batches, args.epochs + 1)
    row.update(breakdown(step, later, device=device, sample_steps=args.sample_steps))
    row["syncs_per_step"], row["sync_sites"] = (None, [])
    if device.type == "cuda":
        row["syncs_per_step"], row["sync_sites"] = count_syncs(lambda: step(*next(later)), times=5)
    return row


# --- output, command line ---------------------------------------------------------------------


def markdown(rows: list[dict], env: dict) -> str:
    """The results table (the breakdown in mean ms per step of the instrumented pass)."""
    head = ["dataset", "loss", "variant", "epoch s", "first s", "warm-up s", "steps/s",
            "positions/s", "peak GiB", "batch ms", "model ms", "loss ms", "optim ms", "step ms",
            "host ms", "syncs/step"]
    keys = [("dataset", 0), ("loss", 0), ("variant", 0), ("epoch_s", 2), ("first_epoch_s", 2),
            ("warmup_s", 2), ("steps_per_s", 1), ("positions_per_s", 0), ("peak_gib", 2),
            ("batch_ms", 2), ("model_ms", 2), ("loss_ms", 2), ("optimizer_ms", 2),
            ("step_ms", 2), ("host_step_ms", 2), ("syncs_per_step", 1)]
    footer = (f"{env['device']}; torch {env['torch']}, triton {env['triton']}, "
              f"cut-cross-entropy {env['cut_cross_entropy']}"
              f"{' with CCE_AUTOTUNE=1' if env.get('cce_autotune') else ''}; {env['dtype']}; "
              f"seed {env['seed']}. "
              "Breakdown: mean ms per step of a separate instrumented pass (each step from an "
              "idle device; model = forward + backward of the body, loss = compaction + loss "
              "forward + backward; host = time to issue the step).")
    return markdown_table(rows, head=head, keys=keys, lead=3, footer=footer)


def write_outputs(out: Path, rows: list[dict], env: dict, args, notes: list[str]) -> str:
    """results.csv / .md / .json after every run; returns the Markdown."""
    table = markdown(rows, env)
    write_results(out, rows, columns=COLUMNS, table=table, env=env, args=args, notes=notes)
    return table


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gin", action="append", default=[],
                        help="an experiment config (e.g. gin/beauty_like_cce.gin); repeatable")
    parser.add_argument("--gin_bindings", action="append", default=[],
                        help="a binding applied to every config, e.g. \"train.device = 'cpu'\"")
    parser.add_argument("--variants", type=split_list, default=["base", "static"])
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs (first = compile)")
    parser.add_argument("--warmup-steps", type=int, default=0,
                        help="untimed steps before the timed epochs (then --epochs 1 is steady)")
    parser.add_argument("--sample-steps", type=int, default=50, help="steps of the breakdown")
    parser.add_argument("--graph-min-bucket", type=int, default=MIN_BUCKET,
                        help="'graph' variant: smallest size step of the compact block (fewer, "
                             "larger buckets = fewer graphs, more padding)")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="start no new run after this many seconds (the rest is reported skipped)")
    parser.add_argument("--out", default=None, help="default runs/bench_epoch/<UTC time>")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Runs every (config, variant), writes the outputs, prints the table last."""
    args = _parse_args(argv)
    try:
        for variant in args.variants:
            parse_variant(variant)
        if min(args.epochs, args.sample_steps, args.graph_min_bucket) < 1 or args.warmup_steps < 0:
            raise BenchError("--epochs, --sample-steps and --graph-min-bucket must be >= 1, "
                             "--warmup-steps >= 0")
        if not args.gin:
            raise BenchError("give --gin CONFIG (repeatable), e.g. --gin gin/beauty_like_cce.gin")
        configs = load_configs(args.gin, args.gin_bindings)
    except BenchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    device = configs[0].device
    if device.type != "cuda":
        print("note: no CUDA device: CPU timings (fp32, CCE's reference implementation) only "
              "check that the benchmark runs", file=sys.stderr)

    out = Path(args.out) if args.out else default_out("bench_epoch")
    _parse(configs[0].path, args.gin_bindings)
    env = environment(device=device, dtype="bfloat16" if device.type == "cuda" else "float32",
                      seed=_train_settings()["seed"])
    env["cce_autotune"] = cce_autotune()
    rows, notes, began = [], [], time.perf_counter()
    for config in configs:
        for variant in args.variants:
            _parse(config.path, args.gin_bindings)  # the model and the loss read their bindings
            if args.budget_s is not None and time.perf_counter() - began > args.budget_s:
                notes.append(f"skipped (over --budget-s): {config.path} {variant}")
                continue
            print(f"[{time.perf_counter() - began:6.0f} s] {config.path} {variant}", file=sys.stderr)
            try:
                row = bench_one(config, variant=variant, args=args)
            except Exception as err:  # one failing variant must not cost the others
                traceback.print_exc()
                row = error_row(err, dataset=config.name, loss=loss_name(_train_settings()["loss_fn"]),
                                variant=variant)
            rows.append(row)
            write_outputs(out, rows, env, args, notes)
    gin.clear_config()
    table = write_outputs(out, rows, env, args, notes)
    print(f"wrote {out}/results.csv, results.md, results.json", file=sys.stderr)
    print(table + "".join(f"{n}\n" for n in notes), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
