"""``fit``'s view of the processes of a run: one, or the K ranks of torchrun (``Ranks``).

What a K-rank run changes in training, and where the exact pieces live:

- the model: DDP around it; under catalog-parallel its item table is this rank's shard
  (``core.parallel.catalog.ShardedItemEmbedding``), which DDP leaves alone; checkpoints are
  sharded (``checkpoint`` / ``restore``: each rank saves and reads its rows and their Adam
  state with ``torch.distributed.checkpoint``, on any number of ranks);
- the batches: this rank's share of each global batch, carrying every rank's share sizes
  (``core.parallel.shares.ShardedBatch``); the step passes those to the loss and the model;
- the loss: the local mean weighted by ``loss_scale`` (data-parallel), or the catalog-parallel
  CE of the whole global batch;
- evaluation: each rank ranks a share of the users, reduced exactly (``core.evaluation.eval_args``);
  under catalog-parallel the model is evaluated as a distributed top-k instead: every rank
  ranks every user against its own shard of the catalog and the per-rank top-k states are
  merged (``eval_args(model=True)``, ``evaluating``; no rank holds the whole table);
- decisions and files: early stopping decided by rank 0, rank 0 writing, every rank's RNG state
  in the checkpoint.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from core import checkpoint as ckpt
from core.data.batching import Batch
from core.evaluation import eval_args, sharded_scoring
from core.model import item_table_init
from core.parallel.catalog import ShardedItemEmbedding, catalog_parallel_ce, item_range
from core.parallel.collectives import DistContext, barrier, broadcast, gather_objects, mean_over_ranks
from core.parallel.shares import RankShares, ShardedBatch, scaled_loss, shard_batch
from core.training.errors import CorruptCheckpoint


class _DDP(torch.nn.parallel.DistributedDataParallel):
    """DDP that still answers ``catalog()``, which the step calls on the model it is given, and
    takes the batch's ``shares`` (``forward(inputs, shares=...)``): the model needs them only
    when its item table is sharded (the lookup is a collective over unequal shares)."""

    def catalog(self) -> torch.Tensor:
        return self.module.catalog()

    def forward(self, inputs: torch.Tensor, *, shares: RankShares) -> torch.Tensor:
        if isinstance(self.module.item_emb, ShardedItemEmbedding):
            return super().forward(inputs, shares=shares)
        return super().forward(inputs)


class Ranks:
    """``fit``'s view of the processes of a run: one (``Ranks()``) or the ranks of torchrun.

    With one process every member is a no-op (the model, loss and batches pass through). With
    K ranks (a ``ctx`` from ``init_from_env``):

    - ``build_model(make, **kwargs)``: with ``catalog_parallel`` the model is made with only
      this rank's shard of the item table (``ShardedItemEmbedding``), which DDP leaves alone
      (its gradients are exact on their owner); ``prepare(model)``: the model the step trains,
      DDP around it.
    - ``loss(loss_fn)``: this rank's loss for its share of a global batch, ``loss(e, c, targets,
      shares=...)`` with the batch's ``RankShares``: the local mean scaled by ``loss_scale``, or
      the catalog-parallel CE of the whole global batch.
    - ``batches``: this rank's share of each global batch, a ``ShardedBatch`` that carries every
      rank's share sizes to the step (nothing is remembered here between batches).
    - ``mean``, ``eval_args``, ``evaluating``, ``decide``, ``barrier``, ``rng_state`` /
      ``own_rng_state``, ``settings``: the epoch loss over ranks; the evaluation split and
      reduced exactly (under catalog-parallel the model's split by catalog shard, merged);
      early stopping decided by rank 0; waiting for rank 0's files; every rank's RNG in the
      checkpoint; what a resume must keep (the number of ranks, catalog-parallel or not).
    """

    def __init__(self, ctx: DistContext | None = None, *, catalog_parallel: bool = False):
        self.ctx = ctx or DistContext()
        self.writer = self.ctx.is_main
        self.device = self.ctx.device
        # one process holds the whole table: catalog-parallel changes nothing there
        self.catalog_parallel = catalog_parallel and self.ctx.enabled
        self._table = None  # the ShardedItemEmbedding, under catalog_parallel

    @property
    def enabled(self) -> bool:
        return self.ctx.enabled

    def settings(self) -> dict:
        """Recorded with the run's settings: a data-parallel resume needs the same K (the RNG
        states); a catalog-parallel one may change K >= 2 (DCP reshards its checkpoint; every
        rank then goes on from rank 0's RNG state). Empty for one process, so 1-process runs
        record what they always did."""
        if not self.enabled:
            return {}
        return {"parallel.world_size": self.ctx.world, "train.catalog_parallel": self.catalog_parallel}

    # --- building ---

    def build_model(self, make, **kwargs) -> torch.nn.Module:
        """``make(**kwargs)``; under catalog-parallel with ``item_table=`` this rank's shard of the
        item table (``item_table_init`` of its rows only): no rank ever makes the whole table."""
        if not self.catalog_parallel:
            return make(**kwargs)
        return make(**kwargs, item_table=self._item_shard)

    def _item_shard(self, n_items: int, dim: int, seed: int) -> ShardedItemEmbedding:
        lo, hi = item_range(n_items, self.ctx.rank, self.ctx.world)
        rows = item_table_init(seed, 1 + lo, 1 + hi, dim)  # table row 1 + i is catalog column i
        self._table = ShardedItemEmbedding(rows, ctx=self.ctx, n_items=n_items)
        return self._table

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model the step trains: DDP around ``model`` (which keeps plain state-dict keys)."""
        if not self.enabled:
            return model
        if self._table is not None:  # differs on every rank, its gradient already exact: DDP leaves it
            _DDP._set_params_and_buffers_to_ignore_for_model(model, ["item_emb.weight"])
        device_ids = [self.ctx.device.index] if self.ctx.device.type == "cuda" else None
        return _DDP(model, device_ids=device_ids)

    def loss(self, loss_fn):
        """The loss the step calls for this rank's share of a global batch: ``loss_fn`` itself
        for one process, else ``loss(e, c, targets, *, shares)`` (the batch's ``RankShares``)."""
        if not self.enabled:
            return loss_fn
        ctx = self.ctx
        if self.catalog_parallel:
            n_items = self._table.n_items

            def cp_loss(e, c, targets, *, shares: RankShares):
                return catalog_parallel_ce(e, c, targets, ctx=ctx, n_items=n_items,
                                           counts=shares.positions, e_grad_scale=ctx.world)
            return cp_loss

        def dp_loss(e, c, targets, *, shares: RankShares):
            return scaled_loss(loss_fn, e, c, targets, local_positions=shares.positions[ctx.rank],
                               global_positions=sum(shares.positions), world=ctx.world)
        return dp_loss

    # --- the epoch ---

    def batches(self, batches: Iterable[Batch]) -> Iterator[Batch | ShardedBatch]:
        """This rank's share of each global batch (``shard_batch``); the batches as they are
        for one process."""
        if not self.enabled:
            return iter(batches)
        return (shard_batch(batch, self.ctx.rank, self.ctx.world) for batch in batches)

    def mean(self, value: float) -> float:
        return mean_over_ranks(self.ctx, value)

    def gather(self, value) -> list:
        """Every rank's ``value`` in rank order (e.g. its peak memory), on every rank."""
        return gather_objects(self.ctx, value)

    # --- evaluation, decisions, files ---

    def eval_args(self, seqs, batch_size: int, *, model: bool = False) -> dict:
        """Extra ``rank_split`` arguments. Data-parallel (and the popularity baseline, which
        needs no table): this rank's share of the users, reduced exactly. ``model`` under
        catalog-parallel: none, every rank ranks every user against its catalog shard and the
        top-k states are merged (``core.evaluation.evaluate_model`` finds the shard itself)."""
        if model and self._table is not None:
            return {}
        return eval_args(self.ctx, seqs, batch_size)

    @contextlib.contextmanager
    def evaluating(self, model: torch.nn.Module):
        """While the block lasts, a catalog-parallel model's item lookup is
        ``core.evaluation.SameIdsLookup`` (every rank looks up the same users' ids: one
        all-reduce of (B, L, D)) and its ``catalog()`` stays this rank's shard: evaluation
        scores the shard and merges the ranks' top-k (``sharded_scoring``). No table is
        gathered. Nothing changes for a model holding its whole table."""
        if self._table is None or model.item_emb is not self._table:
            yield
            return
        with sharded_scoring(model):
            yield

    def agree(self, record: dict) -> None:
        """Before training, every rank compares its operative settings (the run record's
        ``settings`` and their grouped copy, which adds the schedule, and the loss) with every
        other rank's. Ranks started by hand (as on several nodes) could otherwise train with
        another lr and record rank 0's, or end in a misleading "another rank died". Every rank
        raises the same ``RanksDisagree`` line, so none waits for the others."""
        if not self.enabled:
            return
        every = gather_objects(self.ctx, _operative(record))
        for rank, theirs in enumerate(every[1:], start=1):
            for key in sorted(set(every[0]) | set(theirs), key=str):
                if every[0].get(key) != theirs.get(key):
                    raise RanksDisagree(f"rank {rank} runs with {key} = {theirs.get(key)!r} but rank 0 with "
                                        f"{every[0].get(key)!r}: start every rank with the same config")

    def see_shared(self, folder) -> None:
        """After rank 0 has opened the run folder: every rank must see it, since each reads
        best.pt back for the test (a node-local ``--out`` crashed there after training, with
        a FileNotFoundError). The same line on every rank when one does not."""
        if not self.enabled:
            return
        self.barrier()  # rank 0 has made the folder (a check before it raced: "not visible")
        every = gather_objects(self.ctx, (str(folder), Path(folder).is_dir()))
        blind = [r for r, (_, sees) in enumerate(every) if not sees]
        if blind:
            raise RanksDisagree(f"--out {every[0][0]} is not visible on rank(s) {', '.join(map(str, blind))}: on "
                                f"several nodes --out must be on a file system every node shares")

    def decide(self, value):
        """Rank 0's ``value`` (e.g. "stop early") on every rank."""
        return broadcast(self.ctx, value)

    def barrier(self) -> None:
        barrier(self.ctx)

    # --- checkpoints ---

    @property
    def sharded(self) -> bool:
        """Checkpoints are sharded folders (DCP): the item table is split over the ranks."""
        return self._table is not None

    def checkpoint(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None, state: dict):
        """What the run folder saves: ``{"model": ..., "optimizer": ..., **state}`` (one sealed
        file, rank 0 writes it), or under catalog-parallel a ``Sharded`` checkpoint: each
        rank's rows of the table and their Adam state, nothing gathered."""
        if self._table is None:
            whole = {"model": model.state_dict()}
            if optimizer is not None:
                whole["optimizer"] = optimizer.state_dict()
            return {**whole, **state}
        tensors, extra = sharded_tensors(model, optimizer, self._table, self._mesh())
        return Sharded(tensors, {**state, **extra}, self.ctx)

    def restore(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None, state: dict,
                fix: str) -> None:
        """Loads a checkpoint (``RunFolder.check_resume`` / ``read_best``'s ``state``) into ``model``
        and ``optimizer``: a sealed file's dicts, or a sharded folder read by DCP, each rank its
        rows (any number of ranks wrote it). Raises ``CorruptCheckpoint`` on every rank when
        any rank finds a file of the folder corrupted (they share the hashing)."""
        path = state.get(ckpt.SHARDED_PATH)
        if path is None:
            model.load_state_dict(state["model"])
            if optimizer is not None:
                optimizer.load_state_dict(state["optimizer"])
            return
        errors = self.gather(_check_part(state, fix, self.ctx.rank, self.ctx.world))
        if any(errors):
            raise CorruptCheckpoint(next(e for e in errors if e))
        load_sharded_into(model, optimizer, state, self._table, self._mesh() if self._table is not None else None,
                          self.ctx)

    def _mesh(self):
        if getattr(self, "_device_mesh", None) is None:
            from torch.distributed.device_mesh import init_device_mesh

            self._device_mesh = init_device_mesh(self._table.weight.device.type, (self.ctx.world,))
        return self._device_mesh

    def rng_state(self, state: dict):
        """What the checkpoint keeps of the RNGs: ``state`` itself for one process, every
        rank's (a list, rank 0 writes it) for K."""
        if not self.enabled:
            return state
        return gather_objects(self.ctx, state)

    def own_rng_state(self, saved):
        """This process's entry of what ``rng_state`` returned."""
        if not self.enabled:
            return saved
        if not isinstance(saved, list):
            raise ValueError(f"the checkpoint holds one process's RNG state, not {self.ctx.world} ranks'")
        if len(saved) != self.ctx.world:  # a sharded run resumed on another number of ranks:
            return saved[0]  # every rank goes on from rank 0's state, as every rank starts from one seed
        return saved[self.ctx.rank]


class RanksDisagree(ValueError):
    """Ranks started with different settings; refused before training, on every rank."""


def _operative(record: dict) -> dict:
    groups = {f"{group}.{key}": value for group, values in record.get("settings_by_group", {}).items()
              if isinstance(values, dict) for key, value in values.items()}
    return {**groups, **record["settings"], "loss": record.get("loss")}


# --- sharded checkpoints (catalog-parallel): what each rank saves and loads ----------------------

_PAD = "#pad"  # a table's row 0 (SASRec's padding row), saved apart from its item rows


@dataclass
class Sharded:
    """A checkpoint of a catalog-parallel run, as every rank saves it together
    (``core.checkpoint.save_sharded``): ``tensors`` (this rank's rows as ``Shard(0)`` DTensors,
    the replicated rest as plain tensors) and ``state`` (the rest, the same on every rank)."""

    tensors: dict
    state: dict
    ctx: object

    def __getitem__(self, key):  # reads like the whole-file checkpoint's dict ("epoch", ...)
        return self.state[key]

    def save(self, path: Path) -> None:
        ckpt.save_sharded(self.tensors, self.state, path, self.ctx)


def _table_key(model: torch.nn.Module, table) -> str:
    return next(f"{name}.weight" for name, module in model.named_modules() if module is table)


def _rows(local: torch.Tensor, mesh, n_items: int) -> torch.Tensor:
    """This rank's item rows (``local``, V_r x D) as its part of the (V, D) ``Shard(0)`` DTensor."""
    from torch.distributed.tensor import DTensor, Shard

    return DTensor.from_local(local, mesh, [Shard(0)], run_check=False, shape=(n_items, local.shape[1]),
                              stride=(local.shape[1], 1))


def _param_names(model: torch.nn.Module) -> dict[int, str]:
    return {id(p): name for name, p in model.named_parameters()}


def sharded_tensors(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None, table, mesh
                    ) -> tuple[dict, dict]:
    """(tensors, state) of a sharded checkpoint: ``model.NAME`` for the model's state,
    ``optim.NAME.KEY`` for the optimizer's state of parameter NAME; the table's item rows and
    their per-row Adam state as ``Shard(0)`` DTensors (row 0 apart, ``#pad``), nothing copied.
    ``state`` names the sharded keys and holds the optimizer's param groups (by parameter name)."""
    key = _table_key(model, table)
    with table.local_state():
        model_state = model.state_dict()
    tensors = {}
    for name, value in model_state.items():
        if name == key:
            tensors[f"model.{name}"] = _rows(value[1:], mesh, table.n_items)
            tensors[f"model.{name}{_PAD}"] = value[:1]
        else:
            tensors[f"model.{name}"] = value
    extra = {"sharded": {"table": key, "n_items": table.n_items, "world_size": table.ctx.world}}
    if optimizer is None:
        return tensors, extra
    names = _param_names(model)
    groups, keys = [], {}
    for group in optimizer.param_groups:
        groups.append({**{k: v for k, v in group.items() if k != "params"},
                       "params": [names[id(p)] for p in group["params"]]})
        for p in group["params"]:
            name = names[id(p)]
            keys[name] = {}
            for k, value in optimizer.state.get(p, {}).items():
                fqn = f"optim.{name}.{k}"
                if not isinstance(value, torch.Tensor):
                    keys[name][k] = value  # (Adam keeps none: its step is a tensor)
                    continue
                keys[name][k] = None
                if p is table.weight and value.shape == p.shape:
                    tensors[fqn] = _rows(value.detach()[1:], mesh, table.n_items)
                    tensors[fqn + _PAD] = value.detach()[:1]
                else:
                    tensors[fqn] = value.detach()
    extra["optimizer"] = {"param_groups": groups, "state": keys}
    return tensors, extra


def load_sharded_into(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None, state: dict,
                      table=None, mesh=None, ctx=None) -> None:
    """Reads a (checked) sharded checkpoint into ``model`` (and ``optimizer``) in place with DCP.

    ``table`` (a ``ShardedItemEmbedding``, with ``mesh``): this rank reads its rows of the saved
    table and of its Adam state, whatever the number of ranks that saved it. Without it (one
    process, a whole nn.Embedding): the whole table is read, from every saved shard.
    """
    path = state[ckpt.SHARDED_PATH]
    key = state["sharded"]["table"]
    saved = ckpt.sharded_tensors(path)
    dest = {}
    if table is not None:
        with table.local_state():
            model_state = model.state_dict()
    else:
        model_state = model.state_dict()
    for name, value in model_state.items():
        if name == key:
            rows = value[1:]
            if table is not None:
                dest[f"model.{name}"] = _rows(rows, mesh, table.n_items)
            elif (rows.shape[0], *rows.shape[1:]) != saved[f"model.{name}"][0]:
                raise ValueError(f"{path}: {name} holds {saved[f'model.{name}'][0]} items x dim, the model {tuple(rows.shape)}")
            else:
                dest[f"model.{name}"] = rows
            dest[f"model.{name}{_PAD}"] = value[:1]
        else:
            dest[f"model.{name}"] = value
    groups, per_param = None, {}
    if optimizer is not None:
        names = _param_names(model)
        by_name = {names[id(p)]: p for g in optimizer.param_groups for p in g["params"]}
        saved_opt = state["optimizer"]
        for name, keys in saved_opt["state"].items():
            p = by_name[name]
            per_param[name] = {}
            for k, plain in keys.items():
                fqn = f"optim.{name}.{k}"
                if plain is not None or fqn not in saved:
                    per_param[name][k] = plain
                    continue
                shape, dtype = saved[fqn]
                if fqn + _PAD in saved:  # the table's per-row state: this rank's rows (and row 0)
                    local = torch.empty(p.shape, dtype=dtype, device=p.device)
                    dest[fqn] = _rows(local[1:], mesh, table.n_items) if table is not None else local[1:]
                    dest[fqn + _PAD] = local[:1]
                else:
                    local = torch.empty(shape, dtype=dtype)
                    dest[fqn] = local
                per_param[name][k] = local
        groups = saved_opt["param_groups"]
    ckpt.load_sharded(dest, path, ctx)
    if optimizer is None:
        return
    index = {names[id(p)]: i for i, p in enumerate(p for g in optimizer.param_groups for p in g["params"])}
    optimizer.load_state_dict({
        "state": {index[name]: values for name, values in per_param.items() if values},
        "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in groups]})


def _check_part(state: dict, fix: str, rank: int, world: int) -> str | None:
    """This rank's share of the digests of a sharded checkpoint (``core.checkpoint.check_shards``):
    None, or the one error line (gathered, so that every rank raises the same one)."""
    try:
        ckpt.check_shards(state, fix=fix, part=(rank, world))
    except ckpt.CorruptFile as err:
        return str(err)
    return None
