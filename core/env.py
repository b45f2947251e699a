"""Where a run ran: device, library versions and precision, recorded in every metrics.json."""

from __future__ import annotations

import importlib.metadata
import platform

import torch


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else is passed to ``torch.device``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def usable_device(device: str, what: str = "train.device") -> torch.device:
    """``resolve_device``, refusing in one line (ValueError naming ``what``, the setting or
    option) a name that is not 'auto', 'cpu', 'cuda' or 'cuda:N' and a CUDA device this
    machine lacks: every command checks its device with it before any work."""
    try:
        dev = resolve_device(str(device))
    except (RuntimeError, TypeError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise ValueError(f"{what} must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    count = torch.cuda.device_count() if dev.type == "cuda" else 0
    if dev.type == "cuda" and not count:
        raise ValueError(f"{what} = {device!r}, but this machine has no CUDA device")
    if dev.type == "cuda" and (dev.index or 0) >= count:
        raise ValueError(f"{what} = {device!r}, but this machine has {count} CUDA device(s)")
    return dev


def cap_gpu_memory(device: torch.device, gib: float | None, what: str = "train.gpu_memory_gib") -> None:
    """Caps this process's allocations on ``device`` at ``gib`` GiB (PyTorch's caching allocator:
    ``torch.cuda.set_per_process_memory_fraction``), e.g. to emulate a smaller card or to keep
    processes that share one GPU apart; an allocation beyond it raises out of memory. ``None``:
    no cap. A value that is not a number > 0 is refused (ValueError naming ``what``); on a CPU
    there is nothing to cap."""
    if gib is None:
        return
    if isinstance(gib, bool) or not isinstance(gib, (int, float)) or not 0 < gib < float("inf"):
        raise ValueError(f"{what} must be a number of GiB > 0 (or None), got {gib!r}")
    if device.type != "cuda":
        return
    index = torch.cuda.current_device() if device.index is None else device.index  # 'cuda' = the current one
    total = torch.cuda.get_device_properties(index).total_memory / 2**30
    torch.cuda.set_per_process_memory_fraction(min(1.0, gib / total), index)


def package_version(package: str) -> str | None:
    """Installed distribution version, or None when the package is absent (e.g. triton on macOS)."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    """The CPU's marketing name where Linux tells it, else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def device_name(device: torch.device) -> str:
    """Human name of the device: the GPU model on CUDA, the CPU model otherwise."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU: {_cpu_model()} ({torch.get_num_threads()} threads)"


def environment(*, device: torch.device, dtype: str, seed: int) -> dict:
    """The "env" block of metrics.json (DESIGN.md: every result names GPU, versions, dtype, seed)."""
    return {
        "device": device_name(device),
        "device_type": device.type,
        "torch": torch.__version__,
        "triton": package_version("triton"),
        "cut_cross_entropy": package_version("cut-cross-entropy"),
        "python": platform.python_version(),
        "dtype": dtype,
        "seed": seed,
    }
