"""Training: the step (``step.py``), the run folder (``run_folder.py``), the loop (``loop.py``)
and its view of the ranks of a torchrun run (``ranks.py``; the collectives are ``core.parallel``).

    from core.training import train, load_run
    metrics = train(data=data, out_dir="runs/mine", loss_fn=core.losses.cce, epochs=5)
    run = load_run("runs/mine")   # run.model (best.pt, eval mode), run.data, run.metrics
"""

from core.training.errors import RunFolderBusy, RunFolderError, TrainingDiverged, TrainingError
from core.training.loop import Schedule, build, fit, train
from core.training.run_folder import Run, RunFolder, load_run
from core.training.step import StepSettings, make_step

__all__ = ["Run", "RunFolder", "RunFolderBusy", "RunFolderError", "Schedule", "StepSettings",
           "TrainingDiverged", "TrainingError", "build", "fit", "load_run", "make_step", "train"]
