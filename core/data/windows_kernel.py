"""The Triton kernel of ``core.data.batching.windows``: each user's last ``L`` items before an
end, left-padded with 0, in one launch for a whole batch (and the same window shifted by one
item, the training targets, in the same launch).

Program b (one row): u = ``Users[b]``; the user's items are ``Items[Offsets[u]:Offsets[u + 1]]``;
the window ends (exclusive) ``back`` items before the user's last, at ``end = Offsets[u + 1] -
back``, so slot j (0 <= j < L) holds ``Items[end - L + j]`` where that position is at or after
the user's first (``Offsets[u]``), else 0. ``SHIFTED``: ``Next`` gets ``Items[end - L + j + 1]``
under the same condition (the item after each input: the targets; position ``end`` is inside
the user's items whenever ``back >= 1``, which the caller ensures). The items are int32, the
windows int64, rows of ``L`` with unit stride.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def windows_kernel(Items, Offsets, Users, Out, Next, back, L, BLOCK_L: tl.constexpr, SHIFTED: tl.constexpr):
    b = tl.program_id(0)
    u = tl.load(Users + b)
    first = tl.load(Offsets + u)
    end = tl.load(Offsets + u + 1) - back
    j = tl.arange(0, BLOCK_L)
    in_row = j < L
    pos = end - L + j
    keep = in_row & (pos >= first)
    row = b.to(tl.int64) * L + j
    tl.store(Out + row, tl.load(Items + pos, mask=keep, other=0).to(tl.int64), mask=in_row)
    if SHIFTED:
        tl.store(Next + row, tl.load(Items + pos + 1, mask=keep, other=0).to(tl.int64), mask=in_row)
