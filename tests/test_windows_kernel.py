"""core.data.batching.windows' Triton kernel (``core/data/windows_kernel.py``) against its
tensor-op path (``torch_windows``, itself checked against pure Python in test_data_batching.py).

On the CPU the kernel runs under the Triton interpreter (TRITON_INTERPRET=1 set before Triton
decorates it, hence one child process for the module): random CSR sequences with users of 1 to
80 items (shorter and longer than the window), windows of 1, 7 and 50 slots (50: a block of 64
with a masked tail), every ``back`` a split or the training batches use (0-3), plain and shifted,
users in any order and repeated, and an empty batch. The windows are integers: equal means
identical. Broken copies of the kernel (MUTANTS, one source line changed each) must each give a
different window somewhere. ``-m gpu``: a training epoch's batches built on CUDA (the kernel)
equal the CPU's (tensor ops) batch for batch.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.child_env import REPO, run_interpreted

KERNEL = REPO / "core" / "data" / "windows_kernel.py"
CASES = [(1, 0, False), (7, 3, True), (50, 3, True), (50, 0, False), (50, 1, True), (7, 2, False)]  # (L, back, shifted)

MUTANTS = [
    ("no_left_padding",  # the previous user's items shown instead of padding
     "keep = in_row & (pos >= first)", "keep = in_row"),
    ("first_item_dropped",  # a user's first item treated as padding
     "keep = in_row & (pos >= first)", "keep = in_row & (pos > first)"),
    ("window_one_late",  # the window ends one item later (shows the item it should predict)
     "pos = end - L + j", "pos = end - L + j + 1"),
    ("end_ignores_back",  # the split's held-out items shown
     "end = tl.load(Offsets + u + 1) - back", "end = tl.load(Offsets + u + 1)"),
    ("targets_not_shifted",  # the targets are the inputs
     "tl.load(Items + pos + 1, mask=keep, other=0)", "tl.load(Items + pos, mask=keep, other=0)"),
    ("wrong_user",  # row b shows the user of row b // 2
     "u = tl.load(Users + b)", "u = tl.load(Users + b // 2)"),
    ("rows_overlap",  # rows laid out L - 1 apart instead of L (each overwrites its neighbour's first slot)
     "row = b.to(tl.int64) * L + j", "row = b.to(tl.int64) * (L - 1) + j"),
]


def make_seqs(seed: int = 0, n_users: int = 60):
    """DeviceSequences on the CPU: lengths 4-80 (so ``back`` 3 leaves >= 1 input), item ids up
    to 10**6 (int32 storage, int64 windows), and the users to batch (every user, shuffled, some twice)."""
    from core.data.batching import DeviceSequences
    from core.data.shards import SequenceData

    rng = np.random.default_rng(seed)
    lengths = rng.integers(4, 81, n_users)
    lengths[:3] = (4, 5, 80)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    items = rng.integers(1, 10**6, offsets[-1]).astype(np.int32)
    seqs = DeviceSequences.from_data(SequenceData(offsets=offsets, items=items, n_users=n_users, n_items=10**6))
    users = torch.from_numpy(np.concatenate([rng.permutation(n_users), [0, 5, 0]]).astype(np.int64))
    return seqs, users


def differences(window_fn, seqs, users) -> list[int]:
    """Per case, the number of window entries where ``window_fn`` differs from ``torch_windows``."""
    from core.data.batching import torch_windows

    out = []
    for max_len, back, shifted in CASES:
        got = window_fn(seqs, users, back=back, max_len=max_len, shifted=shifted)
        want = torch_windows(seqs, users, back=back, max_len=max_len, shifted=shifted)
        got, want = (got, want) if shifted else ((got,), (want,))
        out.append(sum(int((g != w).sum()) + int(g.shape != w.shape or g.dtype != w.dtype) for g, w in zip(got, want)))
    return out


CHECK = r"""
import json, sys
import torch
import core.data.windows_kernel
from core.data import batching
from tests.mutants import each_mutant
from tests.test_windows_kernel import differences, make_seqs

mutants, kernel_path = json.loads(sys.argv[1])
seqs, users = make_seqs()
res = {"cases": differences(batching.kernel_windows, seqs, users)}
empty = batching.kernel_windows(seqs, users[:0], back=3, max_len=50, shifted=True)
res["empty"] = [tuple(t.shape) == (0, 50) for t in empty]
res["mutants"] = each_mutant(kernel_path, mutants, "core.data.windows_kernel",
                             lambda: differences(batching.kernel_windows, seqs, users))
print(json.dumps(res))
"""


@pytest.fixture(scope="module")
def interpreted() -> dict:
    return run_interpreted(CHECK, [MUTANTS, str(KERNEL)])


@pytest.mark.parametrize("index", range(len(CASES)), ids=lambda i: "L%d-back%d-shifted%s" % CASES[i])
def test_kernel_windows_equal_the_tensor_ops(interpreted, index):
    assert interpreted["cases"][index] == 0


def test_an_empty_batch_gives_empty_windows(interpreted):
    assert interpreted["empty"] == [True, True]


@pytest.mark.parametrize("name", [m[0] for m in MUTANTS])
def test_broken_kernels_are_caught(interpreted, name):
    result = interpreted["mutants"][name]
    assert isinstance(result, list), f"{name}: {result}"  # applied: its source text was found
    assert max(result) > 0, f"{name} not caught: {result}"


def test_a_shifted_window_needs_an_item_after_it():
    from core.data.batching import windows

    seqs, users = make_seqs()
    with pytest.raises(ValueError, match="back >= 1"):
        windows(seqs, users, back=0, max_len=5, shifted=True)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_training_batches_on_cuda_equal_the_cpus():
    """A training epoch's batches: the kernel's (CUDA) against the tensor ops' (CPU)."""
    from core.data.batching import DeviceSequences, TrainBatches, kernel_windows
    from core.data.shards import SequenceData

    rng = np.random.default_rng(1)
    lengths = rng.integers(4, 120, 5_000)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    data = SequenceData(offsets=offsets, items=rng.integers(1, 200_000, offsets[-1]).astype(np.int32),
                        n_users=5_000, n_items=200_000)
    runs = [TrainBatches(DeviceSequences.from_data(data, device), batch_size=256, max_len=50, seed=3)
            for device in ("cpu", "cuda")]
    n = 0
    for cpu, gpu in zip(runs[0].epoch(2), runs[1].epoch(2)):
        assert gpu.inputs.is_cuda and cpu.positions == gpu.positions
        assert torch.equal(cpu.inputs, gpu.inputs.cpu()) and torch.equal(cpu.targets, gpu.targets.cpu())
        n += 1
    assert n == len(runs[0])
    seqs, users = make_seqs()
    cuda = DeviceSequences(*(t.cuda() if isinstance(t, torch.Tensor) else t for t in
                             (seqs.offsets, seqs.items, seqs.train_users, seqs.train_lengths)),
                           seqs.n_users, seqs.n_items, seqs.lengths)
    assert differences(lambda s, u, **kw: tuple(t.cpu() for t in kernel_windows(cuda, u.cuda(), **kw))
                       if kw["shifted"] else kernel_windows(cuda, u.cuda(), **kw).cpu(), seqs, users) == [0] * len(CASES)
