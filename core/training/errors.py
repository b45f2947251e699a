"""Why a run stops early; every message is one line for the user."""


class TrainingError(RuntimeError):
    """A run that cannot go on (out of memory, a step that cannot be captured, ...)."""


class TrainingDiverged(TrainingError):
    """The training loss became NaN or inf; the last good checkpoint is left untouched."""


class RunFolderError(TrainingError):
    """The run folder refuses the request: a fresh run over an old one, a ``--resume`` whose
    settings differ from the checkpoint's, a path that cannot be a folder. Nothing was written."""


class RunFolderBusy(RunFolderError):
    """Another live process holds the run folder's lock."""
