"""The flat form of ``train``: the ``train.*`` names gin files and ``--gin_bindings`` use
(``train.epochs = 3``, ``train.lr``, ``train.loss_fn = @cce``, ...), kept as they were.

``train_flat`` takes those keywords, groups them into ``train``'s settings objects
(``TrainConfig.from_flat``; the defaults are the objects' own) and calls ``train``.
``train_configurable`` is it registered with gin as "train", so existing gin files and the
config.gin of existing run folders (which ``--resume`` reads back) bind exactly as before.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import gin
import torch

from core.data.shards import SequenceData
from core.losses import ce
from core.model import SASRec
from core.parallel.collectives import DEFAULT_TIMEOUT_S, DistContext
from core.training.loop import train
from core.training.run_folder import RunFolder
from core.training.settings import FLAT, Evaluation, Optim, Parallel, Schedule, TrainConfig
from core.training.step import StepSettings

_O, _S, _E, _T, _P = Optim, Schedule, Evaluation, StepSettings, Parallel  # the defaults' homes


def train_flat(
    *,
    data: SequenceData,
    out_dir: str | Path | RunFolder,
    dataset_name: str | None = None,
    data_path: str | Path | None = None,
    model_fn: Callable[..., torch.nn.Module] = SASRec,
    loss_fn: Callable = ce,
    epochs: int = _S.epochs,
    batch_size: int = _O.batch_size,
    max_len: int = _O.max_len,
    lr: float = _O.lr,
    weight_decay: float = _O.weight_decay,
    patience: int = _S.patience,
    eval_every: int = _S.eval_every,
    mask_history: bool = _E.mask_history,
    ks: Sequence[int] = _E.ks,
    seed: int = _O.seed,
    device: str = _P.device,
    amp: bool = _T.amp,
    eval_batch_size: int | None = _E.batch_size,
    resume: bool = False,
    compile: bool | str = _T.compile,
    cuda_graph: bool = _T.cuda_graph,
    graph_min_bucket: int = _T.graph_min_bucket,
    show_progress: bool | None = _S.show_progress,
    nan_check_every: int = _S.nan_check_every,
    catalog_parallel: bool = _P.catalog_parallel,
    parallel: DistContext | None = None,
    test: bool = _E.test,
    watch: Callable[[dict], str | None] | None = None,
    dist_timeout_s: float = DEFAULT_TIMEOUT_S,
    gpu_memory_gib: float | None = _P.gpu_memory_gib,
) -> dict:
    """``train`` with its settings as flat keywords, each the ``train.*`` binding of the same
    name: ``epochs`` goes to ``Schedule``, ``lr`` to ``Optim``, ``eval_batch_size`` to
    ``Evaluation.batch_size``, ``parallel`` (the DistContext) to ``Parallel.ctx``, and so on
    (``core.training.settings.FLAT``). ``dist_timeout_s``: the seconds a collective may wait
    for the other ranks under torchrun before the run ends with one line (a dead or hung
    rank); the command reads it before it joins the process group (``experiments/run.py``),
    so it does nothing here. ``gpu_memory_gib``: each process's cap on its GPU, in GiB
    (``core.env.cap_gpu_memory``; e.g. to emulate a smaller card). Returns metrics.json's dict;
    see ``train``."""
    config = TrainConfig.from_flat(
        model_fn=model_fn, loss_fn=loss_fn, epochs=epochs, batch_size=batch_size, max_len=max_len, lr=lr,
        weight_decay=weight_decay, patience=patience, eval_every=eval_every, mask_history=mask_history,
        ks=ks, seed=seed, device=device, amp=amp, eval_batch_size=eval_batch_size, compile=compile,
        cuda_graph=cuda_graph, graph_min_bucket=graph_min_bucket, show_progress=show_progress, nan_check_every=nan_check_every,
        catalog_parallel=catalog_parallel, parallel=parallel, test=test, gpu_memory_gib=gpu_memory_gib)
    return train(data, out_dir, **config.kwargs(), resume=resume, watch=watch,
                 dataset_name=dataset_name, data_path=data_path)


# ``train_flat`` as gin's configurable "train" (what gin files bind: train.epochs, train.loss_fn, ...),
# for experiments/run.py, the tuner and the epoch benchmark. A wrapped copy: ``train_flat`` stays plain.
train_configurable = gin.external_configurable(train_flat, name="train")


def bound_config() -> TrainConfig:
    """The settings the parsed gin config binds to ``train.*`` (defaults where it binds none),
    as ``train`` would get them: what the epoch benchmark builds its runs from."""
    bound = gin.get_bindings(train_configurable)
    return TrainConfig.from_flat(**{k: v for k, v in bound.items() if k in FLAT})
