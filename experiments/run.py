"""One training run from gin files: python experiments/run.py --gin gin/beauty_cce.gin.

Writes into --out (default runs/<gin stem>-<UTC time>): config.gin (the operative config),
metrics.json, history.jsonl, log.txt, checkpoint.pt, best.pt. Bad configs and missing data
stop with one ``error:`` line before any run folder exists.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import gin

# Imported for their gin registrations (SASRec, ce, cce, dataset) as well as for use.
import core.losses  # noqa: F401
import core.model  # noqa: F401
from core import checkpoint
from core.data.shards import DataFormatError
from core.dataset_config import DataMissingError, dataset
from core.train import TrainingError, train

train_configurable = gin.external_configurable(train, name="train")

# Configs include each other as 'gin/base/train.gin': found from the repository root too.
REPO_ROOT = Path(__file__).resolve().parents[1]
gin.add_config_file_search_path(str(REPO_ROOT))


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gin", action="append", default=[], help="gin file (repeatable)")
    parser.add_argument("--gin_bindings", action="append", default=[],
                        help="a binding such as \"train.epochs = 3\" (repeatable, applied last)")
    parser.add_argument("--out", help="run folder (default: runs/<gin stem>-<UTC time>)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out from its checkpoint.pt "
                             "(without --gin: with the run's own config.gin)")
    args = parser.parse_args(argv)
    if args.resume and not args.out:
        parser.error("--resume needs --out DIR (the run to continue)")
    if args.resume and not args.gin:
        args.gin = [str(Path(args.out) / "config.gin")]
    if not args.gin:
        parser.error("give at least one --gin FILE (e.g. gin/quickstart.gin)")
    return args


def _one_line(err: BaseException) -> str:
    """The error's own message: gin appends "In call to configurable ..." lines to it."""
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def _summary(metrics: dict, out: Path) -> str:
    """A short table for the terminal; metrics.json holds everything."""
    keys = list(metrics["test"])
    rows = [("", *keys), (f"SASRec ({metrics['loss']})", *(f"{metrics['test'][k]:.4f}" for k in keys)),
            ("popularity", *(f"{metrics['popularity_test'][k]:.4f}" for k in keys))]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in rows]
    epoch_s, peak = metrics["epoch_time_s"], metrics["peak_memory_gib"]
    lines.append(
        f"test on {metrics['dataset']['name']} | epochs {metrics['epochs']} (best {metrics['best_epoch']}) | "
        f"epoch {'n/a' if epoch_s is None else f'{epoch_s:.2f} s'} "
        f"(first {metrics['first_epoch_time_s']:.2f} s) | "
        f"peak {'n/a' if peak is None else f'{peak:.2f} GiB'} | {metrics['env']['device']} | {out}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Parses the command line, runs one training, returns the exit status."""
    args = _parse_args(argv)
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

    stem = Path(args.gin[-1]).stem
    out = Path(args.out or f"runs/{stem}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}")
    if not args.resume and (out / "checkpoint.pt").exists():
        print(f"error: {out} already holds a run; pass --resume to continue it or another --out",
              file=sys.stderr)
        return 2

    # Data first: a missing dataset must not leave an empty run folder behind.
    try:
        data = dataset()
    except (DataMissingError, DataFormatError) as err:
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return 1
    except ValueError as err:  # an inconsistent dataset.* binding
        print(f"error: bad gin config: {_one_line(err)}", file=sys.stderr)
        return 2

    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    checkpoint.write_text(gin.config_str(), out / "config.gin")  # kept even if training crashes
    try:
        metrics = train_configurable(data=data.data, dataset_name=data.name, out_dir=out,
                                     resume=args.resume)
    except (TrainingError, ValueError, AssertionError) as err:
        # TrainingError: the run itself failed; ValueError/AssertionError: a setting the model,
        # metrics or device refused (e.g. dim not divisible by n_heads, no CUDA for 'cuda').
        bad_setting = not isinstance(err, TrainingError)
        print(f"error: {'bad gin config: ' if bad_setting else ''}{_one_line(err)}", file=sys.stderr)
        if created and not (out / "checkpoint.pt").exists():
            shutil.rmtree(out)  # nothing was trained: leave no partial run folder
        return 2 if bad_setting else 1
    checkpoint.write_text(gin.operative_config_str(), out / "config.gin")
    print(_summary(metrics, out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
