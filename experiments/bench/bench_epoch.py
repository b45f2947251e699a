"""Epoch-time benchmark: full training epochs of the configs training runs, variant by variant.

    python experiments/bench/bench_epoch.py --gin gin/ml20m_like_ce.gin --gin gin/ml20m_like_cce.gin \
        --variants base,static,static+compile,static+cudagraphs,graph

Each ``--gin`` file is an experiment config as ``experiments/run.py`` takes it (data, model,
loss, ``train.*`` settings; ``--gin_bindings`` apply to all of them, e.g. ``"train.device =
'cpu'"`` or ``"dataset.synthetic_overrides = {'n_users': 1000}"``). For each (config, variant)
it builds the run with ``core.training.loop.build`` from the settings objects the config binds
(``core.training.flat.bound_config``: what ``train`` gets and builds; same model, step,
batches and seed), times ``--epochs`` full training epochs through ``run_epoch`` (GPU
synchronized, evaluation excluded), then a separate instrumented pass of ``--sample-steps``
steps gives the per-step breakdown (CUDA events at phase boundaries; the host clock on the
CPU; see ``PhaseProbe``: the step is timed from outside, its code has no timing hooks), and on CUDA a few steps under ``torch.cuda.set_sync_debug_mode`` count the device->host
syncs per step and where they happen. Variants are ``+``-joined tokens that set the step
(``core.training.step.StepSettings``) instead of the config's ``train.compile`` /
``train.cuda_graph``:

- ``base``: the step's count of scored positions read back from the device (one sync per step,
  as the boolean-mask gather training once used), eager model;
- ``static``: the compact block sized from the host's position counts: no sync (what
  ``train`` runs by default);
- ``compile`` / ``autotune`` / ``cudagraphs``: the model body under torch.compile with mode
  "default" / "max-autotune-no-cudagraphs" / "reduce-overhead" (CUDA graphs), last batch padded;
- ``graph``: the whole step (forward, loss, backward, Adam) captured as CUDA graphs, one per
  bucket of scored positions (``train.cuda_graph``; eager on a CPU). The breakdown then shows
  the whole replay under "model ms". ``graph+compile`` / ``graph+autotune``: the same graphs
  around a compiled body (compaction, packing and model compiled per bucket).

On K processes (one node; several nodes take torchrun's rendezvous flags as run.py does):

    torchrun --standalone --nproc-per-node K experiments/bench/bench_epoch.py \
        --gin gin/beauty_like_ce.gin [--gin_bindings "train.catalog_parallel = True"] --variants static

Each rank joins the process group as ``experiments/run.py`` does
(``experiments.joined.join``), builds the run with the same ``Ranks`` object ``train``
gives ``build`` (DDP, and the item table split by item range under ``train.catalog_parallel``)
and trains its share of every global batch of ``train.batch_size`` rows through
``Ranks.batches``, as ``fit`` does; every config runs on the rank's own device. A timed epoch
starts after a barrier and ends after one, and its time is the slowest rank's. Rank 0 alone
prints and writes the results; what training refuses under torchrun (the ``compile``,
``autotune``, ``cudagraphs`` and ``graph`` variants; catalog-parallel with a loss other than
``ce`` / ``cce_exact``) is refused up front, one ``error:`` line per rank. The rank columns:
``world_size``, ``catalog_parallel`` (in effect: one process holds the whole table),
``positions_per_s`` (the aggregate: global scored positions / epoch time),
``rank_positions_per_s_min`` / ``_max`` (a rank's own share of the positions over the same epoch
time: the slowest and the fastest share; with one process both are ``positions_per_s``) and
``peak_gib`` / ``peak_gib_min`` (the largest and the smallest rank's peak: one row per run, so
the table keeps one line per (config, variant)); ``start_gib``: device memory still allocated
when the run started (left by earlier runs of the process; it is inside ``peak_gib``, 0 when
they freed everything); results.json's row adds ``ranks``: each rank's
scored positions per timed epoch, positions/s and peak. The breakdown is rank 0's, and there is
none under data-parallel (as before its hooks moved out of the step, when DDP refused the
instrumented step's backward in two parts; not yet checked under DDP).

Columns: ``epoch_s`` is the mean over the timed epochs after the first; with ``--epochs 1``
it is that one epoch, which is steady state only after ``--warmup-steps`` (untimed steps of an
extra epoch, its last batch included, that absorb compilation and autotuning; ``warmup_s``).
The loss column is the bound loss's registry name. Writes results.csv, results.md and
results.json (rows, environment, arguments, sync sites) into ``--out`` after every run, and
prints the Markdown table last.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import sys
import time
import traceback
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import this checkout's code, installed or not
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np
import torch

import gin
from core.atomic import write_text
from core.data.shards import DataFormatError
from core.dataset_config import DataMissingError, dataset
from core.losses import loss_facts, loss_name
from core.parallel.collectives import (
    DistContext,
    all_reduce,
    broadcast,
    gather_objects,
    is_collective_failure,
)
from core.paths import REPO_ROOT
from core.training.flat import bound_config
from core.training.loop import build, check_ranks
from core.training.ranks import Ranks
from core.training.step import COMPILE_MODES, GRAPHABLE_MODES, MIN_BUCKET, StepSettings, run_epoch
from experiments.bench.common import (
    GIB,
    BenchError,
    count_syncs,
    error_row,
    mark,
    output_folder,
    phase_ms,
    profile_markdown,
    results_table,
    split_list,
    sync,
    write_results,
)
from experiments.joined import leave, main_first, run_joined
from experiments.output import environment, kernel_profile

TOKENS = {"base", "static", "compile", "autotune", "cudagraphs", "graph"}
COMPILE_TOKENS = {"compile": "default", "autotune": "max-autotune-no-cudagraphs",
                  "cudagraphs": "reduce-overhead"}
assert set(COMPILE_TOKENS.values()) <= set(COMPILE_MODES)
PHASES = ("batch", "model", "loss", "optimizer")
COLUMNS = ["dataset", "loss", "variant", "world_size", "catalog_parallel", "epoch_s", "first_epoch_s",
           "warmup_s", "steps_per_s", "positions_per_s", "rank_positions_per_s_min",
           "rank_positions_per_s_max", "peak_gib", "peak_gib_min", "start_gib", "batch_ms", "model_ms", "loss_ms", "optimizer_ms",
           "step_ms", "host_step_ms", "syncs_per_step", "train_loss", "n_users", "n_items",
           "steps_per_epoch", "positions_per_epoch", "epochs", "error"]


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
    if "graph" in tokens and modes and modes[0] not in GRAPHABLE_MODES:
        raise BenchError(f"bad variant {variant!r}: 'graph' captures the whole step; its compiled "
                         "body must make no CUDA graphs of its own ('compile' or 'autotune')")
    return StepSettings(amp=amp, compile=modes[0] if modes else False, cuda_graph="graph" in tokens,
                        graph_min_bucket=graph_min_bucket)


def counted_on_device(step):
    """The ``base`` variant's step: the scored positions counted on the device and read back
    (one device->host sync per step, what the boolean-mask gather cost) instead of the batch's
    host count. The step computes the same thing either way."""

    def run(inputs, targets, positions, shares=None):
        return step.run(inputs, targets, int((targets != 0).sum()), shares)

    return dataclasses.replace(step, run=run)


class PhaseProbe:
    """Phase boundaries of an eager step, recorded from outside it.

    ``around(loss_fn)`` is the loss the step calls: its call ends the model's forward (and the
    compaction of the scored positions) and the gradient of its hidden states ends the loss's
    backward. The optimizer's step hooks (``attach``) end the body's backward and Adam's update.
    Marks are taken only while ``stamps`` is a list (the breakdown's steps), never while a
    step is captured as a CUDA graph.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.stamps: list | None = None

    def mark(self, name: str) -> None:
        if self.stamps is not None:
            mark(self.stamps, self.device, name)

    def around(self, loss_fn):
        def timed_loss(e, c, targets, **shares):  # K ranks: the batch's shares pass through
            self.mark("model_forward")
            if self.stamps is not None and e.requires_grad:
                e.register_hook(lambda grad: self.mark("loss"))
            return loss_fn(e, c, targets, **shares)

        return timed_loss

    def attach(self, optimizer: torch.optim.Optimizer) -> list:
        """Hooks ``optimizer``; returns the handles (``remove()`` each when done)."""
        return [optimizer.register_step_pre_hook(lambda *_: self.mark("model_backward")),
                optimizer.register_step_post_hook(lambda *_: self.mark("optimizer"))]


@dataclass
class Config:
    """One ``--gin`` config, checked: its dataset and the ``train`` settings that build a run."""

    path: str
    name: str
    data: object  # SequenceData
    device: torch.device


def _parse(path: str, bindings: list[str]) -> None:
    gin.clear_config()
    try:
        gin.parse_config_files_and_bindings([path], bindings, skip_unknown=False)
    except (ValueError, OSError, SyntaxError, KeyError, TypeError) as err:
        raise BenchError(f"bad gin config {path}: {' '.join(str(err).split())}") from err


def _check_exists(path: str) -> None:
    """Before gin, which logs its own search failures on top of our error line."""
    if not Path(path).exists() and not (REPO_ROOT / path).exists():
        raise BenchError(f"bad gin config {path}: no such file")


def load_configs(paths: list[str], bindings: list[str], ctx: DistContext = DistContext()) -> list[Config]:
    """Parses every config and loads its data before any run: bad input fails up front.

    Under torchrun every config runs on the rank's own device (``ctx.device``), as ``train`` does.
    """
    out = []
    for path in paths:
        _check_exists(path)
        _parse(path, bindings)
        try:
            ds = dataset()
            device = dataclasses.replace(bound_config().parallel, ctx=ctx).resolve_device()
        except (DataMissingError, DataFormatError) as err:
            raise BenchError(str(err).splitlines()[0]) from err
        except (ValueError, TypeError) as err:
            raise BenchError(f"bad gin config {path}: {str(err).splitlines()[0]}") from err
        out.append(Config(path, ds.name, ds.data, device))
    gin.clear_config()
    return out


def check_parallel(configs: list[Config], variants: list[str], bindings: list[str], ctx: DistContext) -> None:
    """Refuses up front, as ``train`` does under torchrun, what K ranks cannot run (compile and
    CUDA-graph variants; catalog-parallel with a loss other than exact CE); raises BenchError."""
    for config in configs:
        _parse(config.path, bindings)
        settings = bound_config()
        ranks = Ranks(ctx, catalog_parallel=settings.parallel.catalog_parallel)
        for variant in variants:
            try:
                check_ranks(ranks, parse_variant(variant), settings.loss_fn)
            except ValueError as err:
                raise BenchError(f"{config.path}, variant {variant!r}: {err}") from err
    gin.clear_config()


def _counting(batches, tally: list[int]):
    """``batches`` as they are, adding each one's scored positions (a host int) to ``tally[-1]``."""
    for batch in batches:
        tally[-1] += batch.positions
        yield batch


def _endless(batches, epoch: int):
    """The batches of epochs ``epoch``, ``epoch + 1``, ... without end."""
    while True:
        yield from batches.epoch(epoch)
        epoch += 1


def breakdown(step, batches, *, device, sample_steps: int, skip_steps: int = 3,
              probe: PhaseProbe | None = None) -> dict:
    """Mean ms per phase over ``sample_steps`` instrumented steps (after ``skip_steps``).

    Each step starts on an idle device, so on CUDA a phase's event time is what the device
    spent on it, launch gaps included; ``host_step_ms`` is the host's time to issue the step.
    ``probe``: the step's phase marks (see ``PhaseProbe``); without one (a step replayed as
    CUDA graphs has no inside) the whole step counts as the model's.
    """
    sums = defaultdict(float)
    for i in range(skip_steps + sample_steps):
        stamps = []
        sync(device)
        mark(stamps, device, "start")
        batch = next(batches)
        mark(stamps, device, "batch")
        if probe is None:
            step.on(batch)
            for name in ("model_forward", "loss", "model_backward", "optimizer"):
                mark(stamps, device, name)
        else:
            probe.stamps = stamps
            try:
                step.on(batch)
            finally:
                probe.stamps = None
            seen = [name for name, _, _ in stamps[2:]]
            if seen != ["model_forward", "loss", "model_backward", "optimizer"]:
                raise RuntimeError(f"breakdown: the step's phase marks came as {seen}")
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


def bench_one(config: Config, *, variant: str, args, ctx: DistContext = DistContext()) -> dict:
    """One (config, variant) run -> a row of COLUMNS (plus ``sync_sites`` and ``ranks``, the
    per-rank figures); gin holds the config. Under torchrun every rank runs it (its share of each
    global batch, as ``fit`` trains) and every rank returns the same row but the breakdown (its own)."""
    settings, data, device = bound_config(), config.data, config.device
    step_settings = parse_variant(variant, amp=settings.step.amp, graph_min_bucket=args.graph_min_bucket)
    loss = loss_name(settings.loss_fn)
    uses_cce = loss_facts(settings.loss_fn).kernels == "cut_cross_entropy"
    label = f"{variant} (CCE_AUTOTUNE)" if uses_cce and cce_autotune() else variant
    if step_settings.cuda_graph and args.graph_min_bucket != MIN_BUCKET:
        label += f" (min bucket {args.graph_min_bucket})"
    ranks = Ranks(ctx, catalog_parallel=settings.parallel.catalog_parallel)
    row = {"dataset": config.name, "loss": loss, "variant": label, "world_size": ctx.world,
           "catalog_parallel": ranks.catalog_parallel, "n_users": int(data.n_users),
           "n_items": int(data.n_items), "epochs": args.epochs, "error": None}
    torch.compiler.reset()  # every run compiles (and pays for it) from a clean state
    gc.collect()
    if device.type == "cuda":
        # cuBLAS workspaces of earlier runs' streams stay allocated until cleared (private API,
        # CUDA builds only); without this a run's peak counts memory earlier runs left behind
        getattr(torch._C, "_cuda_clearCublasWorkspaces", lambda: None)()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    # what earlier runs of this process still hold (counted in peak_gib): 0 when they freed everything
    row["start_gib"] = torch.cuda.memory_allocated(device) / GIB if device.type == "cuda" else None
    # The breakdown's marks come from outside the step: around the loss the step calls (the
    # rank's loss, so catalog-parallel runs are timed too) and from the optimizer's hooks.
    graphed = step_settings.cuda_graph and device.type == "cuda"
    probe = None if graphed else PhaseProbe(device)
    if probe is not None:
        rank_loss = ranks.loss
        ranks.loss = lambda loss_fn: probe.around(rank_loss(loss_fn))
    run = build(data, model=settings.model, loss_fn=settings.loss_fn, optim=settings.optim,
                step=step_settings, device=device, ranks=ranks)
    step, batches = run.step, run.batches
    if variant == "base":
        step = counted_on_device(step)
    hooks = probe.attach(run.step.optimizer) if probe is not None else []
    row.update(steps_per_epoch=len(batches), positions_per_epoch=batches.positions_per_epoch)

    # Warm-up: untimed steps of epoch 0 (its last, smaller batch too) take compilation,
    # CUDA-graph recording and Triton autotuning out of the timed epochs.
    sync(device)
    start = time.perf_counter()
    if args.warmup_steps:
        for i, batch in enumerate(ranks.batches(batches.epoch(0))):
            if i < args.warmup_steps or i == len(batches) - 1:
                step.on(batch)
    sync(device)
    row["warmup_s"] = time.perf_counter() - start if args.warmup_steps else None

    # Timed epochs: all ranks start together and the epoch ends when the last one is done (a
    # barrier on each side; the epoch time is the slowest rank's).
    times, tally = [], []  # seconds, this rank's scored positions: per timed epoch
    for epoch in range(1, args.epochs + 1):
        tally.append(0)
        sync(device)
        ranks.barrier()
        start = time.perf_counter()
        train_loss, _ = run_epoch(step, _counting(ranks.batches(batches.epoch(epoch)), tally), device=device)
        sync(device)
        ranks.barrier()
        times.append(time.perf_counter() - start)
    times = all_reduce(ctx, torch.tensor(times, dtype=torch.float64), op=torch.distributed.ReduceOp.MAX).tolist()
    steady = slice(1, None) if len(times) > 1 else slice(0, 1)  # the epochs epoch_s averages
    epoch_s = float(np.mean(times[steady]))
    peak = torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else None
    per_rank = [{"rank": r, "positions": positions, "positions_per_s": sum(positions[steady]) / sum(times[steady]),
                 "peak_gib": peak_r}
                for r, (positions, peak_r) in enumerate(gather_objects(ctx, (tally, peak)))]
    rates = [r["positions_per_s"] for r in per_rank]
    peaks = [r["peak_gib"] for r in per_rank if r["peak_gib"] is not None]
    row.update(first_epoch_s=times[0], epoch_s=epoch_s, steps_per_s=len(batches) / epoch_s,
               positions_per_s=batches.positions_per_epoch / epoch_s, train_loss=ranks.mean(train_loss),
               rank_positions_per_s_min=min(rates), rank_positions_per_s_max=max(rates),
               peak_gib=max(peaks) if peaks else None, peak_gib_min=min(peaks) if peaks else None,
               ranks=per_rank)

    # Not part of the timed epochs: the breakdown and the sync count, on later epochs' batches
    # (every rank runs the same steps; each reports its own).
    later = ranks.batches(_endless(batches, args.epochs + 1))
    if ranks.enabled and not ranks.catalog_parallel:
        # None under data-parallel, as when the step's own hooks split its backward (DDP refused
        # that); the outside marks (PhaseProbe) have not been checked under DDP yet.
        row.update({f"{p}_ms": None for p in (*PHASES, "step", "host_step")})
    else:
        row.update(breakdown(step, later, device=device, sample_steps=args.sample_steps, probe=probe))
    for hook in hooks:
        hook.remove()
    row["syncs_per_step"], row["sync_sites"] = (None, [])
    if device.type == "cuda":
        def one_step():
            batch = next(later)
            step.on(batch)
        row["syncs_per_step"], row["sync_sites"] = count_syncs(one_step, times=5)
        if args.profile_steps:
            row["profile"] = kernel_profile(one_step, steps=args.profile_steps)
    return row


# --- output, command line ---------------------------------------------------------------------


def markdown(rows: list[dict], env: dict) -> str:
    """The results table (the breakdown in mean ms per step of the instrumented pass)."""
    head = ["dataset", "loss", "variant", "epoch s", "first s", "warm-up s", "steps/s",
            "positions/s", "peak GiB", "batch ms", "model ms", "loss ms", "optim ms", "step ms",
            "host ms", "syncs/step", "ranks", "catalog-parallel", "rank positions/s min",
            "rank positions/s max", "peak GiB min", "start GiB"]
    keys = [("dataset", 0), ("loss", 0), ("variant", 0), ("epoch_s", 2), ("first_epoch_s", 2),
            ("warmup_s", 2), ("steps_per_s", 1), ("positions_per_s", 0), ("peak_gib", 2),
            ("batch_ms", 2), ("model_ms", 2), ("loss_ms", 2), ("optimizer_ms", 2),
            ("step_ms", 2), ("host_step_ms", 2), ("syncs_per_step", 1), ("world_size", 0),
            ("catalog_parallel", 0), ("rank_positions_per_s_min", 0), ("rank_positions_per_s_max", 0),
            ("peak_gib_min", 2), ("start_gib", 2)]
    footer = (f"{env['device']}; torch {env['torch']}, triton {env['triton']}, "
              f"cut-cross-entropy {env['cut_cross_entropy']}"
              f"{' with CCE_AUTOTUNE=1' if env.get('cce_autotune') else ''}; {env['dtype']}; "
              f"seed {env['seed']}. "
              "Breakdown: mean ms per step of a separate instrumented pass (each step from an "
              "idle device, marked from outside the step; model = forward + backward of the body, "
              "compaction included, loss = loss forward + backward; host = time to issue the step). Ranks (torchrun): positions/s "
              "is the aggregate (global positions / epoch time, the slowest rank's), rank "
              "positions/s a rank's share over the same time, peak GiB the largest rank's (min: "
              "the smallest); the breakdown is rank 0's (catalog-parallel only, none under DDP).")
    return results_table(rows, head=head, keys=keys, lead=3, footer=footer)


def write_outputs(out: Path, rows: list[dict], env: dict, args, notes: list[str]) -> str:
    """results.csv / .md / .json after every run; returns the Markdown."""
    table = markdown(rows, env)
    write_results(out, rows, columns=COLUMNS, table=table, env=env, args=args, notes=notes)
    profiles = [profile_markdown(f"{r['dataset']}, {r['loss']}, {r['variant']}", r["profile"])
                for r in rows if r.get("profile")]
    if profiles:
        write_text(f"# Kernel profiles ({env['device']}, torch {env['torch']})\n\n" + "\n".join(profiles),
                   out / "profile.md")
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
    parser.add_argument("--profile-steps", type=int, default=0,
                        help="CUDA only: also profile this many steps kernel by kernel "
                             "(torch.profiler device time) into profile.md")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="start no new run after this many seconds (the rest is reported skipped)")
    parser.add_argument("--out", default=None, help="default runs/bench_epoch/<UTC time>")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Checks the arguments, joins torchrun's process group (if any), runs every (config,
    variant); rank 0 writes the outputs and prints the table last."""
    args = _parse_args(argv)
    try:
        for variant in args.variants:
            parse_variant(variant)
        if min(args.epochs, args.sample_steps, args.graph_min_bucket) < 1 or min(args.warmup_steps, args.profile_steps) < 0:
            raise BenchError("--epochs, --sample-steps and --graph-min-bucket must be >= 1, "
                             "--warmup-steps and --profile-steps >= 0")
        if not args.gin:
            raise BenchError("give --gin CONFIG (repeatable), e.g. --gin gin/beauty_like_cce.gin")
        _check_exists(args.gin[0])
        args.out = str(output_folder(args.out, "bench_epoch"))
        _parse(args.gin[0], args.gin_bindings)
        try:
            device = bound_config().parallel.device  # the first config's: the one torchrun's ranks use
        except (ValueError, TypeError) as err:  # e.g. train.cuda_graph and train.compile both set
            raise BenchError(f"bad gin config {args.gin[0]}: {str(err).splitlines()[0]}") from err
        gin.clear_config()
    except BenchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return run_joined(device, lambda ctx: _bench(args, ctx), what="the benchmark")


def _bench(args, ctx: DistContext) -> int:
    """``main`` in this process (one of K under torchrun)."""
    try:
        with main_first(ctx):  # rank 0 prepares (or generates) the data, the others then load it
            configs = load_configs(args.gin, args.gin_bindings, ctx)
        check_parallel(configs, args.variants, args.gin_bindings, ctx)
    except BenchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    device = configs[0].device
    say = print if ctx.is_main else (lambda *a, **k: None)  # rank 0 alone talks and writes
    if device.type != "cuda":
        say("note: no CUDA device: CPU timings (fp32, CCE's reference implementation) only "
            "check that the benchmark runs", file=sys.stderr)

    out = Path(args.out)
    _parse(configs[0].path, args.gin_bindings)
    env = environment(device=device, dtype="bfloat16" if device.type == "cuda" else "float32",
                      seed=bound_config().optim.seed, cce_autotune=cce_autotune(), world_size=ctx.world)
    rows, notes, began = [], [], time.perf_counter()
    for config in configs:
        for variant in args.variants:
            _parse(config.path, args.gin_bindings)  # the model and the loss read their bindings
            # rank 0's clock decides, so that all ranks run (or skip) the same runs
            if broadcast(ctx, args.budget_s is not None and time.perf_counter() - began > args.budget_s):
                notes.append(f"skipped (over --budget-s): {config.path} {variant}")
                continue
            say(f"[{time.perf_counter() - began:6.0f} s] {config.path} {variant}", file=sys.stderr)
            try:
                row = bench_one(config, variant=variant, args=args, ctx=ctx)
            except Exception as err:  # one failing variant must not cost the others
                if ctx.enabled and is_collective_failure(err):
                    raise  # the group is broken: nothing more can run
                traceback.print_exc()
                row = error_row(err, dataset=config.name, loss=loss_name(bound_config().loss_fn),
                                variant=variant, world_size=ctx.world)
            rows.append(row)
            if ctx.is_main:
                write_outputs(out, rows, env, args, notes)
    gin.clear_config()
    if not ctx.is_main:
        return 0
    table = write_outputs(out, rows, env, args, notes)
    print(f"wrote {out}/results.csv, results.md, results.json", file=sys.stderr)
    print(table + "".join(f"{n}\n" for n in notes), end="")
    return 0


if __name__ == "__main__":
    leave(main())
