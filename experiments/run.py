"""One training run from gin files: python experiments/run.py --gin gin/beauty_cce.gin.

On K processes: torchrun --nproc-per-node K experiments/run.py --gin ... (data-parallel; add
--gin_bindings "train.catalog_parallel = True" to split the item table too). Rank 0 writes
the run folder; every rank says its own error line.

Writes into --out (default runs/<gin stem>-<UTC time>) the run folder of
``core.training.run_folder``: config.gin (the operative config), metrics.json, history.jsonl,
log.txt, checkpoint.pt, best.pt. Bad settings, a busy or unusable folder and missing data stop
with one ``error:`` line (exit 2 for bad arguments or settings, 1 otherwise) before anything
is written; ``--resume`` first checks the new bindings against the checkpoint's settings (and
the checkpoints' digests), and a resume that would train no epoch changes nothing (exit 2). A
corrupted checkpoint, a full disk or SIGTERM end the run with one ``error:`` line too (exit 1;
143 for SIGTERM, 130 for Ctrl-C; log.txt records either with the epoch it stopped in).
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import this checkout's code, installed or not
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Configs include each other as 'gin/base/train.gin': found from the repository root too.
from core.paths import REPO_ROOT


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gin", action="append", default=[], help="gin file (repeatable)")
    parser.add_argument("--gin_bindings", action="append", default=[],
                        help="a binding such as \"train.epochs = 3\" (repeatable, applied last)")
    parser.add_argument("--out", help="run folder (default: runs/<gin stem>-<UTC time>)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out from its checkpoint.pt (without --gin: with "
                             "the run's own config.gin); only epochs, patience, eval_every, "
                             "nan_check_every, show_progress, device and eval_batch_size may change")
    args = parser.parse_args(argv)
    if args.resume and not args.out:
        parser.error("--resume needs --out DIR (the run to continue)")
    if args.resume and not args.gin:
        args.gin = [str(Path(args.out) / "config.gin")]
    if not args.gin:
        parser.error("give at least one --gin FILE (e.g. gin/quickstart.gin)")
    return args


def _config_that_ran() -> str:
    """config.gin at the end of a run: gin's operative config (every default that ran), then the
    bindings of configurables that were bound but never called. A catalog-parallel run computes
    its loss itself, so ``cce`` is never called and ``cce.filter_eps = None`` would be lost; the
    ``--resume`` that reads this file back would then be a ``cce`` run and refused."""
    import re

    import gin

    operative = gin.operative_config_str()
    called = set(operative.splitlines())  # the "# Parameters for NAME:" headers among them
    sections = re.split(r"(?m)^(?=# Parameters for )", gin.config_str())
    unused = [s for s in sections if s.startswith("# Parameters for ") and s.splitlines()[0] not in called]
    if not unused:
        return operative
    return operative + "\n# Bound but not called in this run (kept so that --resume binds the same):\n\n" + "".join(unused)


def _one_line(err: BaseException) -> str:
    """The error's own message: gin appends "In call to configurable ..." lines to it."""
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def _portable(path: Path) -> Path:
    """``path`` relative to the repository root when it lies inside it (so a run folder names
    no absolute path of this machine); ``load_run`` resolves it from there again."""
    try:
        return Path(path).resolve().relative_to(REPO_ROOT)
    except ValueError:
        return Path(path)


def _summary(metrics: dict, out: Path) -> str:
    """A short table for the terminal; metrics.json holds everything."""
    split = "test" if metrics["test"] is not None else "valid"  # train.test = False: validation only
    keys = list(metrics[split])
    loss = metrics["loss"] + ("" if metrics.get("loss_ran", metrics["loss"]) == metrics["loss"]
                              else f", ran {metrics['loss_ran']}")
    rows = [("", *keys), (f"SASRec ({loss})", *(f"{metrics[split][k]:.4f}" for k in keys))]
    if metrics["popularity_test"] is not None:
        rows.append(("popularity", *(f"{metrics['popularity_test'][k]:.4f}" for k in keys)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in rows]
    epoch_s, peak = metrics["epoch_time_s"], metrics["peak_memory_gib"]
    lines.append(
        f"{split} on {metrics['dataset']['name']} | epochs {metrics['epochs']} (best {metrics['best_epoch']}) | "
        f"epoch {'n/a' if epoch_s is None else f'{epoch_s:.2f} s'} "
        f"(first {metrics['first_epoch_time_s']:.2f} s) | "
        f"peak {'n/a' if peak is None else f'{peak:.2f} GiB'} | {metrics['env']['device']} | {out}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Parses the command line, runs one training, returns the exit status."""
    args = _parse_args(argv)  # --help and argument errors answer before torch is imported
    import gin

    import core.dataset_config  # noqa: F401  (registers dataset(), which the gin files bind)
    import core.training.flat  # noqa: F401  (registers train(), the flat train.* names)
    from core.gin_search import add_root
    from experiments.joined import run_joined

    add_root(REPO_ROOT)
    missing = [f for f in args.gin if not Path(f).exists() and not (REPO_ROOT / f).exists()]
    if missing:  # before gin, which logs its own search failures on top of ours
        print(f"error: gin file not found: {', '.join(missing)}", file=sys.stderr)
        return 2
    gin.clear_config()
    try:
        gin.parse_config_files_and_bindings(args.gin, args.gin_bindings, skip_unknown=False)
    except (ValueError, OSError, SyntaxError, KeyError, TypeError) as err:
        print(f"error: bad gin config: {' '.join(str(err).split())}", file=sys.stderr)
        return 2

    changed = _changed_data_binding(args, gin)
    if changed:
        print(f"error: {changed}", file=sys.stderr)
        return 2

    device = _bound(gin, "train.device", "auto")
    timeout_s = _bound(gin, "train.dist_timeout_s", None)
    if timeout_s is not None and (isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float))
                                  or not 0 < timeout_s < float("inf")):
        print(f"error: bad gin config: train.dist_timeout_s must be a number of seconds > 0, got {timeout_s!r}",
              file=sys.stderr)
        return 2
    extra = {} if timeout_s is None else {"timeout_s": float(timeout_s)}
    from core.training import RunStopped

    with _stop_on(signal.SIGTERM, signal.SIGINT):
        try:
            return run_joined(device, lambda ctx: _train(args, ctx), what="training", **extra)
        except RunStopped as err:  # log.txt says where it stopped; --resume continues from there
            print(f"error: {err}", file=sys.stderr)
            return 128 + signal.Signals[err.signal_name]


@contextlib.contextmanager
def _stop_on(*signums: int):
    """Each of ``signums`` (SIGTERM, and Ctrl-C's SIGINT) raises ``RunStopped`` while the block
    runs: the run folder records why and where the run ended, and ``main`` says it in one line
    (exit 128 + the signal's number: 143, 130); the previous handlers come back."""
    import threading

    from core.training import RunStopped

    def stop(number, _frame):
        raise RunStopped(signal.Signals(number).name)

    if threading.current_thread() is not threading.main_thread():  # only the main thread may
        yield
        return
    previous = {signum: signal.signal(signum, stop) for signum in signums}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _changed_data_binding(args: argparse.Namespace, gin) -> str | None:
    """``--resume`` with a ``dataset.*`` binding whose value differs from the run's config.gin:
    the refusal, said before any data is read or prepared (the settings check after loading
    would refuse it too, but only once the other data had been written into the cache).
    ``dataset.cache_dir`` may change (where the cache lives, not what it holds). Leaves gin
    holding ``args``' config as it found it."""
    names = {b.split("=", 1)[0].strip() for b in args.gin_bindings if b.strip().startswith("dataset.")}
    names.discard("dataset.cache_dir")
    config = Path(args.out) / "config.gin" if args.out else None
    if not args.resume or not names or not config.is_file():
        return None
    here = {n: _bound(gin, n, None) for n in names}
    gin.clear_config()
    try:
        gin.parse_config_files_and_bindings([str(config)], [], skip_unknown=False)
        then = {n: _bound(gin, n, None) for n in names}
    except (ValueError, OSError, SyntaxError, KeyError, TypeError):
        return None  # the folder's own checks say what is wrong with it
    finally:
        gin.clear_config()
        gin.parse_config_files_and_bindings(args.gin, args.gin_bindings, skip_unknown=False)
    for name in sorted(names):
        if here[name] != then[name]:
            return (f"--resume: {name} is {here[name]!r} here but the run trained with {then[name]!r}; "
                    "a resumed run keeps its own data (drop the binding, or start a new run elsewhere)")
    return None


def _bound(gin, name: str, default):
    """The value gin binds to ``name``, or ``default``."""
    try:
        return gin.query_parameter(name)
    except ValueError:
        return default


def _train(args: argparse.Namespace, ctx) -> int:
    """Loads the data and trains (this rank's part, under torchrun); one ``error:`` line and
    the exit status for what can go wrong."""
    import gin

    from core.data.shards import DataFormatError
    from core.dataset_config import DataMissingError, dataset
    from core.training import CorruptCheckpoint, RunFolder, RunFolderBusy, RunFolderError, TrainingError
    from experiments.joined import main_first
    from core.training.flat import train_configurable

    stem = Path(args.gin[-1]).stem
    out = Path(args.out or f"runs/{stem}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}")
    folder = RunFolder(out, config_text=gin.config_str())  # config.gin: once the checks pass
    try:
        folder.precheck(resume=args.resume)  # before loading data: cheap refusals first
        with main_first(ctx):  # rank 0 prepares (or generates) the data, the others then load it
            data = dataset()
        metrics = train_configurable(data=data.data, dataset_name=data.name, out_dir=folder,
                                     data_path=_portable(data.source), resume=args.resume,
                                     parallel=ctx if ctx.enabled else None)
        folder.write_config(_config_that_ran())  # with every default that ran (rank 0)
    except (DataMissingError, DataFormatError) as err:
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return 1
    except (RunFolderBusy, CorruptCheckpoint) as err:
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return 1
    except RunFolderError as err:  # an existing run, a changed resume, a path that cannot be one
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return 2
    except TrainingError as err:  # the run itself failed; log.txt says why
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return 1
    except (ValueError, TypeError, AssertionError) as err:
        # A setting train(), the model, the data config or the device refused (e.g.
        # train.epochs = 'abc', dim not divisible by n_heads): nothing was written.
        print(f"error: bad gin config: {_one_line(err)}", file=sys.stderr)
        return 2
    if ctx.is_main:
        print(_summary(metrics, out))
    return 0


if __name__ == "__main__":
    status = main()  # imported after it: `--help` stays torch-free
    from experiments.joined import leave  # torchrun: no abort in finalization

    leave(status)
