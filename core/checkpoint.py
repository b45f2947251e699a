"""Checkpoints and RNG state; written atomically through ``core.atomic`` (a crash mid-write
leaves the old file), so ``--resume`` always finds a whole checkpoint.

Every checkpoint carries its own SHA-256 digest (``core.integrity.seal``: a header, the digest,
then the ``torch.save`` bytes), checked before anything is unpickled: a flipped byte, a
truncation or garbage is refused with ``CorruptFile`` (one line naming the file and ``fix``),
never trusted and never a traceback. A checkpoint written before checkpoints carried a digest
(a bare ``torch.save`` zip) cannot be checked and is refused the same way, with a line saying so.
Readers: the run folder (``--resume``: checkpoint.pt and best.pt; the test: best.pt), ``load_run``
(best.pt, for ``core.recommend`` and experiments/recommend.py) and kernels_bench's ``--checkpoint``.
Under torchrun, data-parallel runs keep these files (rank 0 writes them; the model is the same
on every rank).

**Sharded checkpoints** (catalog-parallel runs): the path is a folder written with
``torch.distributed.checkpoint`` (DCP, ``save_sharded``): every rank writes its own rows of the
item table and their Adam state (``__R_I_0.distcp``, a file per tensor; a ``Shard(0)`` DTensor: DCP reshards them on
load for another number of ranks, or for one process), DCP dedups the replicated tensors (the
rest of the model and its Adam state), rank 0 writes DCP's ``.metadata`` and ``state.pt`` (a
sealed ``save_torch`` of everything else: epoch, RNG states, history, settings). Sealing: once
every rank's files are written, each hashes its own, and rank 0 writes ``seal``
(``core.integrity.write_manifest``: every file's name, size and SHA-256), last. Before DCP
unpickles anything, ``sharded_state`` checks the seal and the sizes and reads ``state.pt``
(its own digest), and ``check_shards`` hashes the data files against that same manifest (a
flipped byte, a missing or truncated file: ``CorruptFile``). Crash safety: the folder is
written as ``.NAME.new`` and swapped in by ``core.atomic.swap_dir`` (two renames); ``latest``
resolves a crash between them (the sealed new one, else the old one), and an unsealed folder
is never read.
"""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import torch

from core.atomic import atomic_file, settle_swap, swap_dir, swap_names, whole_dir
from core.atomic import write_json, write_text  # noqa: F401  (re-exported)
from core.integrity import CorruptFile, check_file, read_manifest, seal_header, sha256_file, unseal, write_manifest

_TORCH_ZIP = b"PK\x03\x04"  # what torch.save writes: a checkpoint from before the digest
DEFAULT_FIX = "it cannot be used: train the run again"


class UncheckedFile(CorruptFile):
    """A checkpoint without the digest header that torch.save alone wrote (before the digest)."""

    def __init__(self, path: str | Path, fix: str):
        self.path = Path(path)
        Exception.__init__(self, f"{path}: written without an integrity digest (before checkpoints "
                                 f"carried one, or not by this tool), so it cannot be checked; {fix}")


def save_torch(obj, path: Path) -> None:
    """``torch.save`` made atomic, sealed with its digest (``core.integrity.seal``)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    payload = buffer.getbuffer()
    with atomic_file(path) as f:  # header, then the bytes: one copy of the checkpoint in memory
        f.write(seal_header(payload))
        f.write(payload)


def _payload(path: Path, fix: str) -> io.BytesIO:
    """The checked ``torch.save`` bytes of a checkpoint, as a file positioned at them (sharing
    the bytes read: one copy of the checkpoint in memory), or ``CorruptFile``."""
    try:
        blob = Path(path).read_bytes()
    except OSError as err:
        raise CorruptFile(path, f"cannot be read ({err.strerror or err})", fix) from None
    if blob.startswith(_TORCH_ZIP):
        raise UncheckedFile(path, fix)
    payload = unseal(blob, path, fix)
    f = io.BytesIO(blob)
    f.seek(len(blob) - len(payload))
    return f


def load_torch(path: Path, map_location: torch.device | str = "cpu", *, fix: str = DEFAULT_FIX):
    """Loads a checkpoint written by ``save_torch`` (our own file: full unpickling allowed) once
    its digest matches; raises ``CorruptFile`` (one line: the file, what is wrong, ``fix``)."""
    return torch.load(_payload(path, fix), map_location=map_location, weights_only=False)


def check_torch(path: Path, *, fix: str = DEFAULT_FIX) -> None:
    """Raises ``CorruptFile`` as ``load_torch`` would, without unpickling (a cheap check)."""
    _payload(path, fix)


def rng_state() -> dict:
    """Every RNG a training epoch draws from: torch (dropout), CUDA, numpy, python."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def set_rng_state(state: dict) -> None:
    """Restores what ``rng_state`` saved; the CUDA part only where CUDA exists now too."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


# --- sharded checkpoints: a DCP folder, sealed ------------------------------------------------

SHARDED_PATH = "sharded_path"  # where a sharded checkpoint's state, read back, says its folder is
SHARDED_FILES = "sharded_files"  # and what its checked manifest lists (name -> [size, digest])
SEAL = "seal"  # the manifest of a sharded checkpoint folder, written last
STATE = "state.pt"  # what is not a tensor of the model or the optimizer (sealed save_torch)
_FORMAT = "sasrec-dcp-v1"


def is_sharded(path: Path) -> bool:
    """A sharded checkpoint (a DCP folder), as opposed to one sealed file."""
    return Path(path).is_dir()


def _sealed(folder: Path) -> bool:
    return (folder / SEAL).is_file()


def latest(path: Path) -> Path | None:
    """The whole checkpoint written as ``path``: the file, or the folder once sealed; after a
    crash between the two renames of its swap (``core.atomic.whole_dir``), the sealed new
    folder, else the old one. None when there is none (a folder without its seal is never taken)."""
    path = Path(path)
    return path if path.is_file() else whole_dir(path, _sealed)


def _own_files(folder: Path, rank: int) -> list[str]:
    """The files of ``folder`` that rank ``rank`` wrote: its DCP data files, and rank 0 the rest."""
    names = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name != SEAL)
    if rank == 0:
        return [n for n in names if not (n.startswith("__") and n.endswith(".distcp")) or n.startswith("__0_")]
    return [n for n in names if n.startswith(f"__{rank}_") and n.endswith(".distcp")]


def save_sharded(tensors: dict, state: dict, path: Path, ctx) -> None:
    """Writes a sharded checkpoint folder ``path`` on every rank of ``ctx`` together (a collective).

    ``tensors``: flat name -> tensor; a ``Shard(0)`` DTensor for rows split over ranks (each
    rank writes its part), plain tensors for what every rank holds alike (written once).
    ``state``: anything picklable, the same on every rank (rank 0 writes it). The previous
    checkpoint stays whole until the new one is sealed (see the module docstring). An error
    on any rank (a full disk) raises ``OSError`` on every rank, with the first one's message.
    Three exchanges besides DCP's own: the folder is ready, every rank's digests, the swap done
    (the last one is also why no rank returns before the new checkpoint is in place).
    """
    import torch.distributed.checkpoint as dcp

    from core.parallel.collectives import gather_objects

    path = Path(path)
    new, _ = swap_names(path)

    def together(step):  # every rank runs ``step``; any rank's OSError is raised on all of them
        try:
            result, error = step(), None
        except OSError as err:
            result, error = None, f"{err.strerror or err}" + (f": {err.filename}" if err.filename else "")
        every = gather_objects(ctx, (result, error))
        errors = [e for _, e in every if e is not None]
        if errors:
            raise OSError(errors[0])
        return [r for r, _ in every]

    def prepare():
        if ctx.rank == 0:
            settle_swap(path, _sealed)
            new.mkdir(parents=True)

    together(prepare)
    try:
        dcp.save(tensors, storage_writer=_writer(new), no_dist=not ctx.enabled)
    except OSError:
        raise
    except Exception as err:  # DCP's CheckpointException: every rank's failure, on every rank
        raise OSError(" ".join(str(err).split())[:300]) from None

    def digests():  # DCP's files are all written when its save returns; rank 0 adds state.pt
        if ctx.rank == 0:
            save_torch({**state, "format": _FORMAT}, new / STATE)
        return {n: [(new / n).stat().st_size, sha256_file(new / n)] for n in _own_files(new, ctx.rank)}

    parts = together(digests)

    def seal_and_swap():
        if ctx.rank == 0:
            files = dict(sorted((name, entry) for part in parts for name, entry in part.items()))
            write_manifest({"format": _FORMAT, "world_size": ctx.world, "files": files}, new / SEAL)
            swap_dir(path)

    together(seal_and_swap)


def _manifest(folder: Path, fix: str) -> dict:
    seal_path = folder / SEAL
    if not seal_path.is_file():
        raise CorruptFile(seal_path, "no seal (its save did not finish)", fix)
    manifest = read_manifest(seal_path, fix)
    if manifest.get("format") != _FORMAT:
        raise CorruptFile(seal_path, "not a manifest of this tool", fix)
    return manifest


def _check_digests(folder: Path, files: dict, part: tuple[int, int], fix: str) -> None:
    """Hashes every n-th of ``files`` (a manifest's name -> [size, digest]) from the i-th."""
    i, n = part
    for name, (_, digest) in sorted(files.items())[i::n]:
        check_file(folder / name, digest, fix)


def check_sharded(path: Path, *, fix: str = DEFAULT_FIX, part: tuple[int, int] | None = (0, 1)) -> dict:
    """Raises ``CorruptFile`` unless the folder ``path`` is a sealed sharded checkpoint whose
    files are all there with their recorded sizes and digests; returns its manifest.

    ``part`` (i, n): hash only every n-th file from the i-th; None: sizes only (a cheap check,
    e.g. of best.pt at a resume, whose digests are checked when it is read).
    """
    folder = Path(path)
    manifest = _manifest(folder, fix)
    for name, (size, _) in sorted(manifest["files"].items()):
        try:
            actual = (folder / name).stat().st_size
        except OSError:
            raise CorruptFile(folder / name, "missing from the checkpoint folder", fix) from None
        if actual != size:
            raise CorruptFile(folder / name, f"{actual} bytes, not the {size} it was sealed with", fix)
    if part is not None:
        _check_digests(folder, manifest["files"], part, fix)
    return manifest


def sharded_state(path: Path, *, fix: str = DEFAULT_FIX) -> dict:
    """The ``state`` a sharded checkpoint was saved with (its ``state.pt``), once the folder's
    seal, its files' sizes and ``state.pt``'s digest in the manifest (small: so a whole
    ``state.pt`` of another checkpoint is refused too) are checked; with the folder under
    ``SHARDED_PATH`` and the manifest's files under ``SHARDED_FILES``, for ``check_shards``."""
    manifest = check_sharded(path, fix=fix, part=None)
    check_file(Path(path) / STATE, manifest["files"][STATE][1], fix)
    state = load_torch(Path(path) / STATE, fix=fix)
    return {**state, SHARDED_PATH: Path(path), SHARDED_FILES: manifest["files"]}


def check_shards(state: dict, *, fix: str = DEFAULT_FIX, part: tuple[int, int] = (0, 1)) -> None:
    """Hashes the files of the sharded checkpoint ``sharded_state`` read (``state``), against
    the manifest it checked then (not read again); ``part`` (i, n): every n-th file from the
    i-th (K ranks share the hashing of a large checkpoint and agree on the result). state.pt is
    left out: ``sharded_state`` checked it against the manifest when it read it."""
    files = {name: entry for name, entry in state[SHARDED_FILES].items() if name != STATE}
    _check_digests(Path(state[SHARDED_PATH]), files, part, fix)


def sharded_tensors(path: Path) -> dict:
    """Name -> (shape, dtype) of every tensor in a (checked) sharded checkpoint: DCP's metadata."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    meta = dcp.FileSystemReader(path).read_metadata()
    return {k: (tuple(v.size), v.properties.dtype) for k, v in meta.state_dict_metadata.items()
            if isinstance(v, TensorStorageMetadata)}


def load_sharded(tensors: dict, path: Path, ctx=None) -> None:
    """Reads a (checked) sharded checkpoint into ``tensors`` in place (name -> tensor or
    ``Shard(0)`` DTensor of this process's layout: DCP reads the overlapping parts of the
    saved shards, so any number of ranks, or one process, can read any). A collective when
    ``ctx`` has a process group."""
    import torch.distributed.checkpoint as dcp

    dcp.load(tensors, storage_reader=_reader(path), no_dist=ctx is None or not ctx.enabled)


def _writer(path: Path):
    """DCP's FileSystemWriter, one tensor per call of its ``write_data`` (a file each): DCP keeps
    every tensor it staged for a file (a copy of each view it writes: the table's rows and their
    Adam state) until the file is done, and the last one until the next is staged; one at a time,
    a rank holds at most one copy of its shard."""
    import dataclasses
    from torch.futures import Future

    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.filesystem import _StoragePrefix

    class OneAtATime(dcp.FileSystemWriter):
        def write_data(self, plan, planner):
            results = []
            for i, item in enumerate(plan.items):
                one = dataclasses.replace(plan, items=[item],
                                          storage_data=_StoragePrefix(f"{plan.storage_data.prefix}{i}_"))
                results.extend(super().write_data(one, planner).wait())
            done = Future()
            done.set_result(results)
            return done

    return OneAtATime(path, single_file_per_rank=True, sync_files=True)


def _reader(path: Path):
    """DCP's FileSystemReader, one read per call: it reads a saved part whole before narrowing
    it to what this rank wants, and would keep it until the next one is read (two saved shards
    of another number of ranks at once); one at a time, at most one."""
    import dataclasses
    from torch.futures import Future

    import torch.distributed.checkpoint as dcp

    class OneAtATime(dcp.FileSystemReader):
        def read_data(self, plan, planner):
            for item in plan.items:
                super().read_data(dataclasses.replace(plan, items=[item]), planner).wait()
            done = Future()
            done.set_result(None)
            return done

    return OneAtATime(path)
