"""Why a run stops early; every message is one line for the user."""

import contextlib

from core.integrity import CorruptFile


class TrainingError(RuntimeError):
    """A run that cannot go on (out of memory, a step that cannot be captured, ...)."""


class TrainingDiverged(TrainingError):
    """The training loss became NaN or inf; the last good checkpoint is left untouched."""


class RunFolderError(TrainingError):
    """The run folder refuses the request: a fresh run over an old one, a ``--resume`` whose
    settings differ from the checkpoint's, a path that cannot be a folder. Nothing was written."""


class RunFolderBusy(RunFolderError):
    """Another live process holds the run folder's lock."""


class CorruptCheckpoint(RunFolderError):
    """checkpoint.pt or best.pt fails its digest (``core.integrity``): the message names the file
    and what to do; nothing was loaded from it."""


@contextlib.contextmanager
def corrupt_checkpoint():
    """A ``CorruptFile`` raised in the block (a checkpoint that fails its digest, read by the
    run folder or the ranks) becomes ``CorruptCheckpoint``, the run folder's error, same line."""
    try:
        yield
    except CorruptFile as err:
        raise CorruptCheckpoint(str(err)) from None


class NothingToTrain(RunFolderError):
    """A ``--resume`` of a finished or stopped run that would train no epoch: the folder is left
    exactly as it was (config.gin, metrics.json, log.txt untouched)."""


class WriteFailed(TrainingError):
    """A run folder file could not be written (a full disk, a read-only remount). Every file is
    written atomically, so the folder still holds the last whole epoch; the message says which."""


class RunStopped(BaseException):
    """A signal (SIGTERM) ended the run. A BaseException, like KeyboardInterrupt, so that no
    ``except Exception`` on the way swallows it; the run folder adds where it stopped and what
    checkpoint.pt holds (log.txt and the error line then say so)."""

    def __init__(self, signal_name: str):
        super().__init__(f"stopped by {signal_name} before training began")
        self.signal_name = signal_name
        self.placed = False
