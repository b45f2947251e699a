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
every rank's files are written, each hashes its own, and rank 0 writes ``seal`` (``seal`` of a
JSON manifest: every file's name, size and SHA-256), last. ``check_sharded`` checks it before
DCP unpickles anything (a flipped byte, a missing or truncated file: ``CorruptFile``).
Crash safety: the folder is written as ``.NAME.new`` and swapped in by two renames (the old
one to ``.NAME.old``, the new one in, the old removed); ``latest`` resolves a crash between
them (the sealed new one, else the old one), and an unsealed folder is never read.
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from core.atomic import atomic_file, write_json, write_text  # noqa: F401  (re-exported)
from core.integrity import CorruptFile, check_file, seal, seal_header, sha256_file, unseal

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
SEAL = "seal"  # the manifest of a sharded checkpoint folder, written last
STATE = "state.pt"  # what is not a tensor of the model or the optimizer (sealed save_torch)
_FORMAT = "sasrec-dcp-v1"


def is_sharded(path: Path) -> bool:
    """A sharded checkpoint (a DCP folder), as opposed to one sealed file."""
    return Path(path).is_dir()


def _aside(path: Path, what: str) -> Path:
    return path.with_name(f".{path.name}.{what}")


def latest(path: Path) -> Path | None:
    """The whole checkpoint written as ``path``: the file, or the folder once sealed; after a
    crash between the two renames of ``save_sharded``, the sealed new folder, else the old
    one. None when there is none (a folder without its seal is never taken)."""
    path = Path(path)
    if path.is_file():
        return path
    for candidate in (path, _aside(path, "new"), _aside(path, "old")):
        if (candidate / SEAL).is_file():
            return candidate
    return None


def _settle(path: Path) -> None:
    """Rank 0, before a save: finishes a swap a crash interrupted (``latest``'s choice becomes
    ``path``) and removes what is left of unfinished saves."""
    new, old = _aside(path, "new"), _aside(path, "old")
    if not path.exists() and (whole := latest(path)) is not None and whole != path:
        os.rename(whole, path)
    for leftover in (new, old):
        if leftover.exists():
            shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()


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
    """
    import torch.distributed.checkpoint as dcp

    from core.parallel.collectives import barrier, gather_objects

    path = Path(path)
    new, old = _aside(path, "new"), _aside(path, "old")

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
            _settle(path)
            new.mkdir(parents=True)

    together(prepare)
    try:
        dcp.save(tensors, storage_writer=_writer(new),
                 no_dist=not ctx.enabled)
    except OSError:
        raise
    except Exception as err:  # DCP's CheckpointException: every rank's failure, on every rank
        raise OSError(" ".join(str(err).split())[:300]) from None

    def write_state():
        if ctx.rank == 0:
            save_torch({**state, "format": _FORMAT}, new / STATE)
        return None

    together(write_state)
    digests = together(lambda: {n: [(new / n).stat().st_size, sha256_file(new / n)] for n in _own_files(new, ctx.rank)})

    def seal_and_swap():
        if ctx.rank != 0:
            return
        files = {name: entry for part in digests for name, entry in part.items()}
        manifest = json.dumps({"format": _FORMAT, "world_size": ctx.world, "files": files}, sort_keys=True)
        with atomic_file(new / SEAL) as f:
            f.write(seal(manifest.encode()))
        if path.exists():
            os.rename(path, old)
        os.rename(new, path)
        _fsync_dir(path.parent)
        if old.exists():
            shutil.rmtree(old)

    together(seal_and_swap)
    barrier(ctx)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _manifest(folder: Path, fix: str) -> dict:
    seal_path = folder / SEAL
    try:
        blob = seal_path.read_bytes()
    except OSError as err:
        problem = "no seal (its save did not finish)" if not seal_path.exists() else f"cannot be read ({err.strerror or err})"
        raise CorruptFile(seal_path, problem, fix) from None
    try:
        manifest = json.loads(bytes(unseal(blob, seal_path, fix)))
    except ValueError:
        raise CorruptFile(seal_path, "not a manifest of this tool", fix) from None
    if manifest.get("format") != _FORMAT or not isinstance(manifest.get("files"), dict):
        raise CorruptFile(seal_path, "not a manifest of this tool", fix)
    return manifest


def check_sharded(path: Path, *, fix: str = DEFAULT_FIX, part: tuple[int, int] | None = (0, 1)) -> dict:
    """Raises ``CorruptFile`` unless the folder ``path`` is a sealed sharded checkpoint whose
    files are all there with their recorded sizes and digests; returns its manifest.

    ``part`` (i, n): hash only every n-th file from the i-th (K ranks share the reading of a
    large checkpoint; each checks its part, and they agree on the result); None: sizes only
    (a cheap check, e.g. of best.pt at a resume, whose digests are checked when it is read).
    """
    folder = Path(path)
    manifest = _manifest(folder, fix)
    files = sorted(manifest["files"].items())
    for name, (size, _) in files:
        try:
            actual = (folder / name).stat().st_size
        except OSError:
            raise CorruptFile(folder / name, "missing from the checkpoint folder", fix) from None
        if actual != size:
            raise CorruptFile(folder / name, f"{actual} bytes, not the {size} it was sealed with", fix)
    if part is not None:
        i, n = part
        for name, (_, digest) in files[i::n]:
            check_file(folder / name, digest, fix)
    return manifest


def sharded_state(path: Path, *, fix: str = DEFAULT_FIX) -> dict:
    """The ``state`` a sharded checkpoint was saved with (its ``state.pt``), once the folder's
    seal, its files' sizes and ``state.pt``'s own digest are checked (the data files' digests
    are ``check_sharded``'s, with ``part``)."""
    check_sharded(path, fix=fix, part=None)
    return load_torch(Path(path) / STATE, fix=fix)


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
