"""Training: the step (``step.py``), the run folder (``run_folder.py``), the loop (``loop.py``)
and its view of the ranks of a torchrun run (``ranks.py``; the collectives are ``core.parallel``).

    from core.training import Schedule, train, load_run
    metrics = train(data, "runs/mine", loss_fn=core.losses.cce, schedule=Schedule(epochs=5))
    run = load_run("runs/mine")   # run.model (best.pt, eval mode), run.data, run.metrics
"""

from core.training.errors import (CorruptCheckpoint, NothingToTrain, RunFolderBusy, RunFolderError, RunStopped,
                                  TrainingDiverged, TrainingError, WriteFailed)
from core.training.flat import train_flat
from core.training.loop import build, fit, train
from core.training.run_folder import Run, RunFolder, load_run
from core.training.settings import Evaluation, Optim, Parallel, Schedule, TrainConfig
from core.training.step import StepSettings, make_step

__all__ = ["CorruptCheckpoint", "Evaluation", "NothingToTrain", "Optim", "Parallel", "Run", "RunFolder",
           "RunFolderBusy", "RunFolderError", "RunStopped", "Schedule", "StepSettings", "TrainConfig",
           "TrainingDiverged", "TrainingError", "WriteFailed", "build", "fit", "load_run", "make_step", "train",
           "train_flat"]
