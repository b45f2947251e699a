"""One Triton kernel launched again and again at one shape, with less Python per launch.

``kernel[grid](*args, **meta)`` binds the arguments, computes a specialization key (each
pointer's 16-byte alignment, each integer's divisibility by 16 and equality to 1), formats the
options into a cache key string, looks the compiled kernel up and only then launches it: host
time that makes an eager flash_ce call host-bound (issue 21.4). A ``Launch`` is made per plan
(fixed grid, constexprs and integers); its first call at a given alignment of the tensor
arguments goes through ``kernel[grid]`` (compiling if needed) and keeps the compiled kernel it
returns; later calls with the same key (the tensors' ``data_ptr() % 16``, the integers) call the
compiled kernel's launcher directly, with exactly the arguments ``kernel[grid]`` would have
passed. Same kernel binary, same arguments, so the same results bit for bit
(tests/test_flash_ce.py's GPU case compares the two ways on every kernel of a call).

Used only on CUDA with no Triton launch hooks set (a profiler such as proton installs them;
then every call takes ``kernel[grid]``), and only while ``DIRECT`` is on. Off by default until
measured on a GPU (``FLASH_CE_DIRECT_LAUNCH=1`` in the environment turns it on;
``kernels_bench/eager_point.py`` times both ways in one process).
"""

from __future__ import annotations

import os

import torch

DIRECT = os.environ.get("FLASH_CE_DIRECT_LAUNCH") == "1"


class Launch:
    """``kernel[grid](*args, **meta)`` for a fixed grid and meta (constexprs, num_warps, ...)."""

    def __init__(self, kernel, grid: tuple[int, ...], meta: dict):
        self.kernel, self.meta = kernel, meta
        self.grid = tuple(grid) + (1,) * (3 - len(grid))
        self._compiled: dict = {}
        names = list(kernel.arg_names)
        self._n_args = None
        # The parameters after the positional ones must all be constexprs given in ``meta``.
        for n_args in range(len(names) + 1):
            if all(name in meta for name in names[n_args:]):
                self._n_args = n_args
                self._tail = tuple(meta[name] for name in names[n_args:])
                break

    def __call__(self, *args) -> None:
        first = args[0]
        if not (DIRECT and first.is_cuda and len(args) == self._n_args) or _hooks():
            self.kernel[self.grid](*args, **self.meta)
            return
        key = tuple(a.data_ptr() & 15 if isinstance(a, torch.Tensor) else a for a in args)
        compiled = self._compiled.get(key)
        if compiled is None:
            self._compiled[key] = self.kernel[self.grid](*args, **self.meta)
            return
        stream = torch._C._cuda_getCurrentRawStream(torch._C._cuda_getDevice())  # as Triton's own launch
        compiled.run(*self.grid, stream, compiled.function, compiled.packed_metadata, None, None, None,
                     *args, *self._tail)


def _hooks() -> bool:
    from triton import knobs  # imported on first use: this module is imported without Triton

    return knobs.runtime.launch_enter_hook is not None or knobs.runtime.launch_exit_hook is not None
