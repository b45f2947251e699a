"""``train``'s settings as small frozen objects (t5x's pattern, STYLE.md 11), and the flat
``train.*`` names gin files bind (``train.lr``, ``train.epochs``, ...) mapped onto them.

- ``Optim``: what fixes the training trajectory besides the model and the loss: the batches
  (``batch_size`` sequences, each cut to its last ``max_len`` items), Adam's ``lr`` and
  ``weight_decay``, and the ``seed`` of every RNG (initialization, dropout, batch order).
  ``max_len`` lives here because the batches are cut to it; ``train`` passes the same value
  to the model (``model(n_items=..., max_len=...)``) and to evaluation, so the three can never
  disagree. A ``--resume`` may change none of these.
- ``Schedule``: how long and how watched a run trains; a ``--resume`` may change all of it.
- ``Evaluation``: the metrics' cut-offs, history masking, the evaluation batch size, and
  whether the test split is read at all.
- ``StepSettings`` (``core.training.step``): how the step runs (amp, compile, CUDA graphs).
- ``Parallel``: where the run computes: ``device`` for one process, or this process's place in
  a torchrun run (``ctx``) with the item table split over the ranks (``catalog_parallel``).

``TrainConfig`` holds one of each plus the model factory and the loss; ``TrainConfig.from_flat``
builds it from today's flat keywords (``FLAT``: flat name -> (group, field)), and
``TrainConfig.flat()`` gives them back, keyed as the ``train.*`` bindings a refusal names.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from core.env import cap_gpu_memory, usable_device
from core.losses import ce
from core.model import SASRec
from core.parallel.collectives import DistContext
from core.training.step import StepSettings


@dataclass(frozen=True)
class Optim:
    """Batches of ``batch_size`` sequences cut to ``max_len`` items, Adam(``lr``,
    ``weight_decay``), every RNG seeded with ``seed``: what a resume must keep."""

    batch_size: int = 256
    max_len: int = 50
    lr: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 0


@dataclass(frozen=True)
class Schedule:
    """How long and how watched a run trains: what a ``--resume`` may change."""

    epochs: int = 200
    patience: int = 10  # evaluations without a new best validation NDCG@ks[0] before stopping
    eval_every: int = 1  # validate every this many epochs (and after the last one)
    nan_check_every: int = 0  # also check the loss every this many steps (one sync); 0: per epoch
    show_progress: bool | None = None  # None: a progress bar only when stderr is a terminal


@dataclass(frozen=True)
class Evaluation:
    """Full-catalog ranking: metrics @``ks`` (early stopping watches ``ks[0]``), the user's
    history masked or not, ``batch_size`` users at a time (None: sized from the catalog).
    ``test``: False leaves the test split unread (a tuning trial's objective is validation)."""

    ks: tuple[int, ...] = (10,)
    mask_history: bool = True
    batch_size: int | None = None
    test: bool = True


@dataclass(frozen=True)
class Parallel:
    """Where the run computes: ``device`` ('auto', 'cpu', 'cuda', 'cuda:N') for one process;
    under torchrun ``ctx`` (``core.parallel.collectives.init_from_env``) and the rank's own
    device, with ``catalog_parallel`` splitting the item table by item range over the ranks."""

    device: str = "auto"
    catalog_parallel: bool = False
    ctx: DistContext | None = None
    gpu_memory_gib: float | None = None  # each process's cap on its GPU (``core.env.cap_gpu_memory``)

    def resolve_device(self) -> torch.device:
        """The rank's own device under torchrun, else ``device`` resolved; ValueError naming
        ``train.device`` when it cannot be used. Applies ``gpu_memory_gib`` there."""
        if self.ctx is not None and self.ctx.enabled:
            device = self.ctx.device
        else:
            device = usable_device(self.device, "train.device")
        cap_gpu_memory(device, self.gpu_memory_gib)
        return device


# flat ``train.*`` keyword -> (TrainConfig field, field of that group; None: the group itself)
FLAT: dict[str, tuple[str, str | None]] = {
    "model_fn": ("model", None), "loss_fn": ("loss_fn", None),
    **{k: ("optim", k) for k in ("batch_size", "max_len", "lr", "weight_decay", "seed")},
    **{k: ("schedule", k) for k in ("epochs", "patience", "eval_every", "nan_check_every", "show_progress")},
    "ks": ("evaluation", "ks"), "mask_history": ("evaluation", "mask_history"),
    "eval_batch_size": ("evaluation", "batch_size"), "test": ("evaluation", "test"),
    **{k: ("step", k) for k in ("amp", "compile", "cuda_graph", "graph_min_bucket")},
    "device": ("parallel", "device"), "catalog_parallel": ("parallel", "catalog_parallel"),
    "parallel": ("parallel", "ctx"), "gpu_memory_gib": ("parallel", "gpu_memory_gib"),
}


@dataclass(frozen=True)
class TrainConfig:
    """Everything ``train`` takes besides the data, the folder and the run's bookkeeping:
    ``train(data, out_dir, **config.kwargs())``. ``model(n_items=..., max_len=...)`` builds the
    model; ``loss_fn(e (N, D), c (V, D), targets (N,)) -> scalar``."""

    model: Callable[..., torch.nn.Module] = SASRec
    loss_fn: Callable = ce
    optim: Optim = field(default_factory=Optim)
    schedule: Schedule = field(default_factory=Schedule)
    evaluation: Evaluation = field(default_factory=Evaluation)
    step: StepSettings = field(default_factory=StepSettings)
    parallel: Parallel = field(default_factory=Parallel)

    @classmethod
    def from_flat(cls, **flat) -> TrainConfig:
        """Today's flat ``train.*`` keywords (any subset; the rest keep their defaults) -> the
        config. TypeError on a name that is not one (``FLAT`` lists them)."""
        unknown = sorted(set(flat) - set(FLAT))
        if unknown:
            raise TypeError(f"not a train setting: {', '.join(unknown)} (known: {', '.join(FLAT)})")
        whole = {group: flat[name] for name, (group, sub) in FLAT.items() if sub is None and name in flat}
        parts: dict[str, dict] = {}
        for name, (group, sub) in FLAT.items():
            if sub is not None and name in flat:
                parts.setdefault(group, {})[sub] = flat[name]
        base = cls()
        groups = {group: dataclasses.replace(getattr(base, group), **values) for group, values in parts.items()}
        return cls(**whole, **groups)

    def flat(self) -> dict:
        """The flat ``train.*`` keywords this config stands for (``from_flat``'s inverse)."""
        return {name: getattr(self, group) if sub is None else getattr(getattr(self, group), sub)
                for name, (group, sub) in FLAT.items()}

    def kwargs(self) -> dict:
        """The config as ``train``'s keywords."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
