"""A command's process lifecycle under torchrun or alone: join, run, say one error line, exit.

The commands (experiments/run.py, experiments/bench/bench_epoch.py) own their process: this
module joins torchrun's process group (``join``), runs the command's body and turns a bad
device or a lost rank into one ``error:`` line and an exit status (``run_joined``), lets rank 0
go first where the others read what it writes (``main_first``), and ends the process
(``leave``, which skips Python's finalization under torchrun). The collectives themselves are
``core.parallel.collectives``.

Importing this module imports torch (through ``core.parallel``): a command imports it after
parsing its arguments, so that ``--help`` stays torch-free, and imports ``leave`` after ``main()``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import NoReturn

from core.parallel.collectives import (DEFAULT_TIMEOUT_S, DistContext, DistributedError, barrier, failure,
                                       init_from_env, is_collective_failure, shutdown)


class JoinError(ValueError):
    """This process cannot start: ``status`` 2 for a bad ``train.device`` (one process), 1 when
    the torchrun process group cannot be joined. The message is one line."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


def join(device: str = "auto", *, timeout_s: float = DEFAULT_TIMEOUT_S) -> DistContext:
    """``init_from_env`` for a command-line tool (experiments/run.py, the epoch benchmark):
    its failures as a ``JoinError`` that the tool prints as one ``error:`` line."""
    try:
        return init_from_env(device, timeout_s=timeout_s)
    except (ValueError, RuntimeError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        if os.environ.get("WORLD_SIZE", "1") == "1":  # one process: only the device can be wrong
            raise JoinError(f"bad gin config: {first}", 2) from err  # usable_device's line
        raise JoinError(f"cannot join the torchrun process group: {first}", 1) from err


def run_joined(device: str, body, *, what: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> int:
    """A command-line tool's main under torchrun or alone: joins the group (``join``), returns
    ``body(ctx)``, and turns a bad device or a lost rank into one ``error:`` line and its exit
    status (2 / 1); the group is shut down whatever happens. ``what`` names the work in the line;
    ``timeout_s`` is how long a collective waits for the other ranks (``train.dist_timeout_s``)."""
    try:
        ctx = join(device, timeout_s=timeout_s)
    except JoinError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.status
    ok = False
    try:
        status = body(ctx)
        ok = True
        return status
    except RuntimeError as err:  # another rank died or hung (DDP says so inside backward too)
        if not (ctx.enabled and is_collective_failure(err)):
            raise
        if not isinstance(err, DistributedError):
            err = failure(ctx, what, err)
        print(f"error: {str(err).strip().splitlines()[0]}", file=sys.stderr)
        return 1
    finally:
        shutdown(ctx, wait_for_all=ok)


def leave(status: int) -> NoReturn:
    """The exit of a command-line tool whose main ran ``run_joined``: ``sys.exit(status)``,
    except under torchrun (WORLD_SIZE > 1), where the process ends with ``os._exit`` once
    logging, stdout and stderr are flushed. There the group is shut down and every output is
    written and closed (atomic writes) by now, and Python's own finalization is what can go
    wrong: a gloo thread with no Python frame aborts it ("terminate called without an active
    exception", SIGABRT) after a finished run, which torchrun reports as a failed one; 4 runs
    in 60 of the 2-rank CPU epoch benchmark on a busy 2-core machine did, even after the
    closing barrier of ``shutdown``.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)


@contextlib.contextmanager
def main_first(ctx: DistContext):
    """Each node's local rank 0 runs the block first (e.g. prepares the data cache, which may be
    node-local), then the node's other ranks (which read it). Across nodes the local ranks 0
    run side by side: on a shared file system two of them may build one cache at once, which
    the cache's atomic folder write settles (the loser loads the winner's folder)."""
    first = ctx.local_rank == 0
    if ctx.enabled and not first:
        barrier(ctx)
    yield
    if ctx.enabled and first:
        barrier(ctx)
