"""SASRec (Kang & McAuley, 2018): a causal Transformer over a user's item sequence.

Read top to bottom: attention block -> feed-forward -> block -> the model. The item embedding
is also the output head: ``forward`` returns hidden states ``e`` and ``catalog()`` returns the
item embeddings ``c``, so any loss ``loss(e, c, targets)`` scores the whole catalog without
the model knowing which loss it is.

Padding convention (shared with ``core.data.batching``): sequences are LEFT-padded with item id
0 to length ``L <= max_len``, so the most recent item is always the last column.

Packed batches (``forward(seq, pack=T)``, what training runs by default: ``SASRec.packed``): a
beauty-like batch is 256 rows x 50 columns holding ~2-3 real items a row, so the padded body
computes 12,800 positions for ~600 real ones. Packed, the batch's real positions are
concatenated in row-major order into one (T, D) block (then filler up to T), each with its
row as its document id; attention stays inside a document and is causal there
(document-causal), and positions are counted from each row's end exactly as in the padded
layout, so a real position's output is the padded model's (``tests/test_packed.py`` holds the
padded model as the oracle). See ``Packing`` for the layout and the two attention kernels
(FlexAttention on CUDA, a padded-layout SDPA elsewhere).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import gin
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention.flex_attention import BlockMask, flex_attention

from core import table_grad
from core.data.batching import padded_compact_index

# FlexAttention's tile: a packed block's length T must be a multiple of it where the block
# mask is built (CUDA); ``packed_length`` rounds the step's sizes up to it.
FLEX_BLOCK = 128


# --- packed batches ---------------------------------------------------------------------------


class Packing(NamedTuple):
    """Where a (B, L) left-padded batch's real positions sit in a packed (T, D) block.

    Slots 0..N-1 hold the N real positions (``seq != 0``) in row-major order (row 0's items
    oldest first, then row 1's, ...): the same order as the training step's compaction of the
    scored targets (``core.data.batching.padded_compact_index``), since inputs and targets are
    one window shifted by one and left-padded alike. Slots N..T-1 are filler: item 0, and each
    its own document (``doc`` = B + slot), so a filler slot attends only to itself and no real
    slot ever sees one (nor does any real slot see another row's items). Every field is
    computed on the device from ``seq`` without a host sync.
    """

    index: torch.Tensor  # (T,) int64: the slot's flat index into (B*L); 0 for filler
    valid: torch.Tensor  # (T,) bool: a real position
    doc: torch.Tensor  # (T,) int64: the row of a real slot, B + slot for filler; non-decreasing
    start: torch.Tensor  # (T,) int64: the first slot of the slot's document
    shape: tuple[int, int]  # (B, L) of the padded batch
    block_mask: BlockMask | None  # FlexAttention's document-causal mask (built on CUDA)


def pack(seq: torch.Tensor, length: int, *, block_mask: bool | None = None) -> Packing:
    """The ``Packing`` of ``seq`` (B, L) into ``length`` slots (>= the number of real items;
    the caller knows that count on the host). ``block_mask``: build FlexAttention's block mask
    (default: on CUDA, where the packed attention is FlexAttention); needs ``length`` to be a
    multiple of ``FLEX_BLOCK``."""
    B, L = seq.shape
    device = seq.device
    real = seq != 0  # (B, L)
    if not real.is_cuda and int(real.sum()) > length:  # free on the CPU: a wrong count in tests
        raise ValueError(f"pack: {int(real.sum())} real positions do not fit in {length} slots")
    index, valid = padded_compact_index(real, length)  # (T,), (T,): the step's compaction order
    slots = torch.arange(length, device=device)
    counts = real.sum(1)  # (B,)
    first = counts.cumsum(0) - counts  # (B,): each row's first slot
    row = index // L
    doc = torch.where(valid, row, B + slots)
    start = torch.where(valid, first[row], slots)
    if block_mask is None:
        block_mask = seq.is_cuda
    mask = document_causal_block_mask(doc, start) if block_mask else None
    return Packing(index, valid, doc, start, (B, L), mask)


def packed_positions(packing: Packing, max_len: int) -> torch.Tensor:
    """(T,) int64 position-embedding index of each slot: the padded layout gives column j of a
    (B, L) batch position max_len - L + j; a slot keeps its column's, so a real item's position
    is max_len - 1 - (its distance from its row's end) in both layouts (filler: column 0's)."""
    L = packing.shape[1]
    return max_len - L + packing.index % L


def document_causal(doc: torch.Tensor):
    """FlexAttention's ``mask_mod``: key ``kv`` is in query ``q``'s document and not after it.
    (A real query never sees a filler key: each filler slot is a document of its own.)"""

    def mask_mod(b, h, q, kv):
        return (doc[q] == doc[kv]) & (kv <= q)

    return mask_mod


def document_causal_block_mask(doc: torch.Tensor, start: torch.Tensor, *,
                               mask_mod: Callable | None = None, block: int = FLEX_BLOCK) -> BlockMask:
    """The document-causal ``BlockMask`` over T = len(doc) slots, built from tensors with
    sync-free ops (what ``create_block_mask`` gives for ``document_causal(doc)``, without its
    (T, T) evaluation of the mask; capturable in a CUDA graph). ``mask_mod``: another mask
    for the pairs inside partial tiles (tests); ``block``: the tile (FLEX_BLOCK, smaller in
    tests to get many tiles).

    Documents are contiguous runs of ``doc`` (non-decreasing) and ``start`` is each slot's
    document start. Tile (i, j) of FLEX_BLOCK x FLEX_BLOCK has an allowed pair iff
    start(first query of tile i) // FLEX_BLOCK <= j <= i: every key tile from the first
    query's document start up to the diagonal holds keys of that document before it, and no
    query of tile i has a document starting earlier. It is full (no mask needed) iff j < i and
    the first key of tile j is in the last query's document: then every slot from there to
    the end of tile i is one document, and every key precedes every query.
    """
    T = doc.numel()
    if T % block:
        raise ValueError(f"a packed block's length must be a multiple of {block}, got {T}")
    n = T // block
    firsts = torch.arange(n, device=doc.device) * block  # (n,) first slot of each tile
    lasts = firsts + block - 1
    i = torch.arange(n, device=doc.device)[:, None]  # (n, 1) query tile
    j = torch.arange(n, device=doc.device)[None, :]  # (1, n) key tile
    touched = (j >= (start[firsts] // block)[:, None]) & (j <= i)  # (n, n)
    full = (j < i) & (doc[firsts][None, :] == doc[lasts][:, None])  # (n, n)
    partial = touched & ~full

    def ordered(blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(count per row, its column indices first, ascending) as BlockMask wants them."""
        count = blocks.sum(-1, dtype=torch.int32)[None, None]  # (1, 1, n)
        cols = torch.argsort(blocks.to(torch.int32), dim=-1, descending=True, stable=True)
        return count, cols.to(torch.int32)[None, None]  # (1, 1, n, n)

    kv_num, kv_idx = ordered(partial)
    full_num, full_idx = ordered(full)
    return BlockMask.from_kv_blocks(kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=block,
                                    mask_mod=mask_mod or document_causal(doc), seq_lengths=(T, T))


_compiled_flex = None


def compiled_flex_attention():
    """``torch.compile(flex_attention, dynamic=False)``, made once (on first use: importing the
    model compiles nothing). Eager flex_attention materializes the scores; compiled, it is one
    fused kernel per shape. One compile per (T, dtype): the training step rounds T to a few
    buckets, and dynamo's recompile limit (8 per function) is raised to 64 so that a run with
    more buckets than 8 keeps the compiled kernel instead of falling back to eager."""
    global _compiled_flex
    if _compiled_flex is None:
        import torch._dynamo

        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        _compiled_flex = torch.compile(flex_attention, dynamic=False)
    return _compiled_flex


def packed_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, packing: Packing, *,
                     kernel: str | None = None) -> torch.Tensor:
    """Document-causal attention over a packed block: q, k, v (1, H, T, d) -> (1, H, T, d).

    ``kernel``: "flex" (FlexAttention with ``packing.block_mask``; compiled on CUDA) or
    "padded" (the block scattered back into the (B, L) layout, SDPA under the padded model's
    mask, gathered again: exact, O(B L^2), no (T, T) anything; the CPU's path, since
    FlexAttention has no CPU backward). Default: "flex" when a block mask was built (CUDA).
    No attention-probability dropout on either (FlexAttention has none): see ``SASRec``.
    """
    kernel = kernel or ("flex" if packing.block_mask is not None else "padded")
    if kernel == "flex":
        flex = compiled_flex_attention() if q.is_cuda else flex_attention
        return flex(q, k, v, block_mask=packing.block_mask)
    if kernel != "padded":
        raise ValueError(f"kernel must be 'flex' or 'padded', got {kernel!r}")
    B, L = packing.shape
    _, H, T, d = q.shape
    target = torch.where(packing.valid, packing.index, B * L)  # filler -> the spare row, dropped

    def unpack(t: torch.Tensor) -> torch.Tensor:  # (1, H, T, d) -> (B, H, L, d)
        rows = t[0].transpose(0, 1)  # (T, H, d)
        out = rows.new_zeros(B * L + 1, H, d).index_put((target,), rows)
        return out[:-1].view(B, L, H, d).transpose(1, 2)

    real = torch.zeros(B * L + 1, dtype=torch.bool, device=q.device)
    real = real.index_put((target,), packing.valid)[:-1].view(B, L)
    y = F.scaled_dot_product_attention(unpack(q), unpack(k), unpack(v),
                                       attn_mask=padded_mask(real)[:, None])  # (B, H, L, d)
    return y.transpose(1, 2).reshape(B * L, H, d).index_select(0, packing.index).transpose(0, 1)[None]


def padded_mask(real: torch.Tensor) -> torch.Tensor:
    """(B, L) bool real positions -> (B, L, L) the padded model's attention mask: causal AND
    "key is a real item": real positions never look at padding, so their outputs do not
    depend on how long the padding is. The diagonal stays open so that a padded query (whose
    keys are all padding) gets a finite softmax instead of NaN."""
    L = real.shape[1]
    causal = torch.ones(L, L, dtype=torch.bool, device=real.device).tril()  # (L, L)
    eye = torch.eye(L, dtype=torch.bool, device=real.device)  # (L, L)
    return (causal & real[:, None, :]) | eye  # (B, L, L)


# --- the model --------------------------------------------------------------------------------


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention through ``F.scaled_dot_product_attention`` with a given mask."""

    def __init__(self, *, dim: int, n_heads: int, dropout: float):
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"dim={dim} must be divisible by n_heads={n_heads}")
        self.n_heads = n_heads
        self.dropout = dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | Packing, *, last: bool = False) -> torch.Tensor:
        """x (B, L, D), mask (B, 1, L, L) bool, True = may attend -> (B, L, D); or a packed
        block x (T, D) with its ``Packing`` -> (T, D) (no attention dropout: see ``SASRec``).
        ``last``: only the last column's query -> (B, 1, D) (keys and values of every column)."""
        if last:
            B, L, D = x.shape
            w, b = self.qkv.weight, self.qkv.bias
            q = F.linear(x[:, -1:], w[:D], b[:D])  # (B, 1, D)
            k, v = F.linear(x, w[D:], b[D:]).split(D, dim=2)  # 2 x (B, L, D)
            q, k, v = (t.view(B, -1, self.n_heads, D // self.n_heads).transpose(1, 2) for t in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, :, -1:],
                                               dropout_p=self.dropout if self.training else 0.0)  # (B, H, 1, D/H)
            return self.resid_dropout(self.proj(y.transpose(1, 2).reshape(B, 1, D)))
        if isinstance(mask, Packing):
            T, D = x.shape
            q, k, v = (t.view(1, T, self.n_heads, D // self.n_heads).transpose(1, 2)
                       for t in self.qkv(x).split(D, dim=1))  # 3 x (1, H, T, D/H)
            y = packed_attention(q, k, v, mask)  # (1, H, T, D/H)
            return self.resid_dropout(self.proj(y.transpose(1, 2).reshape(T, D)))
        B, L, D = x.shape
        q, k, v = self.qkv(x).split(D, dim=2)  # 3 x (B, L, D)
        # (B, L, D) -> (B, H, L, D/H)
        q, k, v = (t.view(B, L, self.n_heads, D // self.n_heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
        )  # (B, H, L, D/H)
        y = y.transpose(1, 2).contiguous().view(B, L, D)
        return self.resid_dropout(self.proj(y))


class FeedForward(nn.Module):
    """SASRec's point-wise feed-forward: D -> D -> D with ReLU, as in the original paper.

    (nanoGPT widens to 4D with GELU; SASRec keeps the width, which is what the seed's
    settings were tuned with.)
    """

    def __init__(self, *, dim: int, dropout: float):
        super().__init__()
        self.fc = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., D) -> (..., D)."""
        return self.dropout(self.proj(self.dropout(F.relu(self.fc(x)))))


class Block(nn.Module):
    """Pre-LayerNorm Transformer block: x + attn(ln(x)), then x + ffn(ln(x))."""

    def __init__(self, *, dim: int, n_heads: int, dropout: float):
        super().__init__()
        self.ln_attn = nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim=dim, n_heads=n_heads, dropout=dropout)
        self.ln_ffn = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim=dim, dropout=dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | Packing, *, last: bool = False) -> torch.Tensor:
        """x (B, L, D), mask (B, 1, L, L) -> (B, L, D); or x (T, D) and its ``Packing``.
        ``last``: the last column only -> (B, 1, D) (what evaluation scores)."""
        y = self.attn(self.ln_attn(x), mask, last=last)
        x = (x[:, -1:] if last else x) + y
        return x + self.ffn(self.ln_ffn(x))


def table_backed(grad: torch.Tensor | None, rows: int) -> torch.Tensor | None:
    """The (rows, D) buffer whose rows 1.. ``grad`` (rows - 1, D) is, or None: how a loss hands
    back dC ready to be the whole table's gradient (``core.losses.flash_ce`` allocates it so)."""
    base = None if grad is None else grad._base
    if (base is None or base.shape != (rows, *grad.shape[1:]) or base.dtype != grad.dtype
            or not base.is_contiguous() or grad.data_ptr() != base[1:].data_ptr()):
        return None
    return base


class TiedItemTable(torch.autograd.Function):
    """The item table's two uses in a training step as ONE autograd node: the input lookup
    (the rows of ``ids``) and the output catalog (rows 1..V), so the table's gradient is built
    in one buffer (issue 21.3, "one pass over the item table"):
    - the loss's dC, used as it is when the loss handed it back as rows 1.. of a (V + 1, D)
      buffer (``table_backed``; flash_ce does), else copied into a new one (ce, cce);
    - the lookup's row gradients added into it in place (CUDA, or the CPU under the Triton
      interpreter: ``core.table_grad.add_rows_``, one kernel (after a stable sort of the ids
      where there are many) whose programs each sum one item's rows in a fixed order and add the sum to its row: no
      atomics, no host sync, bit-identical reruns, only the touched rows read and written; it
      replaced ``table += embedding_dense_backward(...)``, a zeroed (V + 1, D) table, a sort
      and a full-table add, and ``index_put_`` with ``accumulate`` did it in place but took
      0.21 ms a beauty-like and 0.62 ms an ml20m-like step on the H200, where many positions
      share an item (call D of 2026-12-02); the CPU: ``index_add_``, in order); so the gradient
      equals autograd's to fp32 rounding;
    - the padding row zeroed (``nn.Embedding(padding_idx=0)``'s rule; the kernel skips id 0).
    Autograd's own path builds three (V + 1, D) tensors per step: dC's slice backward into a
    zeroed table, the embedding backward's zeroed table, and their sum (~370 MB of traffic at
    207,649 x 64 fp32); here, with a table-backed dC, none: the table's gradient is dC's
    buffer with the looked-up rows added. Forward: ``(F.embedding(ids, weight), weight[1:])``,
    the same values. Its backward picks its buffer at run time, so it runs in eager autograd
    even under torch.compile (``tied_lookup``)."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, ids: torch.Tensor):
        ctx.save_for_backward(ids)
        ctx.table_shape = weight.shape
        return F.embedding(ids, weight), weight[1:]

    @staticmethod
    def backward(ctx, grad_rows, grad_catalog):
        (ids,) = ctx.saved_tensors
        rows, dim = ctx.table_shape
        table = table_backed(grad_catalog, rows)
        if table is None:
            like = grad_catalog if grad_catalog is not None else grad_rows
            table = like.new_empty(rows, dim)
            if grad_catalog is None:
                table.zero_()
            else:
                table[1:] = grad_catalog  # row 0 (garbage, padding ids add into it) is zeroed below
        if grad_rows is not None:
            flat_ids, flat_rows = ids.reshape(-1), grad_rows.reshape(-1, dim)
            if table_grad.runs_kernel(table):  # CUDA (or the interpreter): sorted, in place, no atomics
                table_grad.add_rows_(table, flat_ids, flat_rows)
            else:  # the CPU's index_put_ accumulates in parallel (not reproducible); index_add_ in order
                table.index_add_(0, flat_ids, flat_rows.to(table.dtype))
        table[0] = 0  # the padding row gets no gradient (garbage in a table-backed dC's row 0)
        return table, None


# torch.compiler.disable, but importing torch._dynamo (and with it triton) on the first call
# instead of at decoration: the public decorator added ~1.1 s to ``import core.model`` (CPU,
# measured here) and imported triton. A private torch helper; if a torch lacks it, the public one.
_disable_compile = getattr(torch, "_disable_dynamo", torch.compiler.disable)


@_disable_compile
def tied_lookup(weight: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``TiedItemTable.apply(weight, ids)``, always run eagerly: inside a torch.compile'd caller
    (the graphed step's ``compiled_forward_block``) Dynamo breaks the graph here, compiles what
    comes before and after, and leaves this node to eager autograd. Traced, its backward could
    not take the loss's dC buffer at run time (``table_backed`` looks at the real tensor's
    ``_base``) nor launch ``core.table_grad``'s kernel; eager, it does both
    (tests/test_graph_step.py checks that the compiled block's catalog is this node's)."""
    return TiedItemTable.apply(weight, ids)


INIT_STD = 0.02  # every weight's Normal(0, std) init (nanoGPT/BERT)
INIT_BLOCK_ROWS = 4096  # the item table's init is drawn in blocks of this many rows


def item_table_init(seed: int, lo: int, hi: int, dim: int) -> torch.Tensor:
    """Rows [lo, hi) of the initial (n_items + 1, dim) item table: Normal(0, INIT_STD), row 0
    (padding) zero, in the default dtype, on the CPU.

    A function of ``seed`` and the rows only: block b (rows [b * INIT_BLOCK_ROWS, (b + 1) *
    INIT_BLOCK_ROWS)) is always drawn whole by a generator seeded with (seed + b) mod 2**32,
    so a rank can make its shard of the table, with the values the whole table has there,
    without drawing (or allocating) the rest; the transient is one block.
    """
    out = torch.empty(max(hi - lo, 0), dim)
    for b in range(lo // INIT_BLOCK_ROWS, -(-hi // INIT_BLOCK_ROWS)):
        start = b * INIT_BLOCK_ROWS
        gen = torch.Generator().manual_seed((seed + b) % 2**32)
        block = torch.randn(INIT_BLOCK_ROWS, dim, generator=gen)  # (INIT_BLOCK_ROWS, dim), whole
        a, z = max(lo, start), min(hi, start + INIT_BLOCK_ROWS)
        out[a - lo : z - lo] = block[a - start : z - start] * INIT_STD
    if lo == 0 and hi > 0:
        out[0] = 0.0  # the padding row
    return out


def whole_item_table(n_items: int, dim: int, seed: int) -> nn.Embedding:
    """One process's item table: all n_items + 1 rows of ``item_table_init``."""
    weight = item_table_init(seed, 0, n_items + 1, dim)
    return nn.Embedding.from_pretrained(weight, freeze=False, padding_idx=0)


# n_items comes from the data and max_len from train.max_len (one value for batches and
# positions): binding them here would be silently overridden, so gin refuses it. item_table is
# the training ranks' (core.training.ranks.Ranks.build_model), not a setting.
@gin.configurable(denylist=["n_items", "max_len", "item_table"])
class SASRec(nn.Module):
    """SASRec over ``n_items`` items (ids 1..n_items; 0 is padding).

    Defaults are the seed's settings: embedding 64, max_len 50, 2 blocks, 1 head, dropout 0.2.
    ``item_table(n_items, dim, seed)`` makes the item table (``whole_item_table``; a rank of a
    catalog-parallel run makes only its shard of it): its init is ``item_table_init`` with a
    seed drawn from torch's global RNG, so the rest of the model draws the same values
    whatever the table's size or split.

    ``packed`` (gin ``SASRec.packed``, default True): the training step runs the body on the
    batch's real positions only (``forward(seq, pack=T)``; ``core.training.step``), False keeps
    the padded (B, L) body. Packed attention has no dropout on its probabilities (FlexAttention
    offers none; the embedding, residual and feed-forward dropouts stay), so with ``dropout`` > 0
    packed training is a slightly different regularizer than padded; in eval mode the two give
    the same outputs. Evaluation always runs the padded ``forward(seq)`` (it scores only the
    last column). ``packed`` says how training runs, not what the model is, so it is not among
    the recorded constructor arguments (``settings``): checkpoints of either kind load alike.
    """

    def __init__(
        self,
        n_items: int,
        *,
        dim: int = 64,
        max_len: int = 50,
        n_blocks: int = 2,
        n_heads: int = 1,
        dropout: float = 0.2,
        item_table: Callable[[int, int, int], nn.Module] = whole_item_table,
        packed: bool = True,
    ):
        super().__init__()
        if n_items < 1:
            raise ValueError(f"n_items must be >= 1, got {n_items}")
        if dim < 1 or n_heads < 1 or n_blocks < 0 or not 0.0 <= dropout < 1.0:
            raise ValueError(f"SASRec needs dim >= 1, n_heads >= 1, n_blocks >= 0 and 0 <= dropout < 1; "
                             f"got dim={dim}, n_heads={n_heads}, n_blocks={n_blocks}, dropout={dropout}")
        self.n_items = n_items
        self.max_len = max_len
        self.packed = bool(packed)
        # The constructor's arguments: checkpoints record them, so a trained model can be
        # rebuilt without gin (core.training.load_run).
        self.settings = dict(n_items=n_items, dim=dim, max_len=max_len, n_blocks=n_blocks,
                             n_heads=n_heads, dropout=dropout)
        self.item_emb = item_table(n_items, dim, int(torch.randint(2**31, ())))
        self.pos_emb = nn.Embedding(max_len, dim)
        self.emb_dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            Block(dim=dim, n_heads=n_heads, dropout=dropout) for _ in range(n_blocks)
        )
        self.ln_out = nn.LayerNorm(dim)
        # The original scales item embeddings by sqrt(dim) before adding positions; we keep
        # it, so items dominate positions at init exactly as in the paper's model.
        self.emb_scale = math.sqrt(dim)
        for name, child in self.named_children():
            if name != "item_emb":  # initialised by item_table, from its own seed
                child.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        """Normal(0, INIT_STD) weights and zero biases (nanoGPT/BERT)."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=INIT_STD)
        if isinstance(module, nn.Linear):
            nn.init.zeros_(module.bias)

    def forward(self, seq: torch.Tensor, *, shares=None, pack: int | Packing | None = None,
                last: bool = False, with_catalog: bool = False):
        """seq (B, L) int64 item ids, left-padded with 0 -> hidden states (B, L, D).

        Row b, column j is the representation after seeing seq[b, :j+1]; score it against
        ``catalog()`` to predict the next item. Padded columns hold finite values that mean
        nothing; callers score only positions with a real target. ``shares``: only when the
        item table is split over ranks (``core.parallel.catalog.ShardedItemEmbedding``), every
        rank's share of the batch, which its lookup (a collective) takes as an argument.

        ``pack=T``: the body runs on the batch's real positions packed into T slots (``pack``;
        T >= their count, a multiple of ``FLEX_BLOCK`` on CUDA) and returns (T, D): slot s <->
        the s-th real position in row-major order, the rest filler. Not with ``shares``.
        ``pack`` may be the batch's ``Packing`` itself (``pack(seq, T)``), when the caller
        needs its index too (the training step: the targets' compaction is the same).

        ``last=True``: only the last column's hidden state, (B, D), what evaluation and
        recommendations score. The last block computes keys and values for every column but
        its query, residual, feed-forward and LayerNorms for the last column only (the blocks
        before it are needed whole); equal to ``forward(seq)[:, -1]`` to fp32 rounding (other
        matmul shapes), ``tests/test_model.py``.

        ``with_catalog=True`` (the training step): returns ``(hidden, catalog)``, the lookup and
        ``catalog()`` as one autograd node (``TiedItemTable``), so the table's gradient is
        built in one buffer. Same values and gradients (to fp32 rounding) as ``forward(seq)``
        with ``catalog()``; a table split over ranks (``shares``) keeps its own lookup.
        """
        if with_catalog and (shares is not None or not isinstance(self.item_emb, nn.Embedding)):
            raise ValueError("with_catalog needs the model's whole item table (one process)")
        B, L = seq.shape
        if L > self.max_len:
            raise ValueError(f"sequence length {L} exceeds max_len={self.max_len}")
        if pack is not None:
            if shares is not None or last:
                raise ValueError("a packed forward runs in one process (no rank shares) and returns every slot")
            return self._forward_packed(seq, pack, with_catalog)
        # Positions are counted from the right end (the last item always gets max_len - 1),
        # so a sequence's real items get the same positions however much padding precedes them.
        pos = torch.arange(self.max_len - L, self.max_len, device=seq.device)  # (L,)
        items, catalog = self._lookup(seq, shares, with_catalog)  # (B, L, D)
        x = items * self.emb_scale + self.pos_emb(pos)  # (B, L, D)
        x = self.emb_dropout(x)
        mask = padded_mask(seq != 0)[:, None]  # (B, 1, L, L): broadcast over heads
        for i, block in enumerate(self.blocks):
            x = block(x, mask, last=last and i == len(self.blocks) - 1)
        out = self.ln_out(x[:, -1]) if last else self.ln_out(x)  # (B, D) or (B, L, D)
        return (out, catalog) if with_catalog else out

    def _lookup(self, ids: torch.Tensor, shares, with_catalog: bool):
        """(the rows of ``ids``, the catalog from the same node or None)."""
        if with_catalog:
            return tied_lookup(self.item_emb.weight, ids)
        return (self.item_emb(ids) if shares is None else self.item_emb(ids, shares)), None

    def _forward_packed(self, seq: torch.Tensor, packing: int | Packing, with_catalog: bool = False):
        """seq (B, L) -> (T, D): ``forward(seq, pack=T or its Packing)``."""
        if not isinstance(packing, Packing):
            packing = pack(seq, packing)
        ids = torch.where(packing.valid, seq.flatten().index_select(0, packing.index), 0)  # (T,)
        pos = packed_positions(packing, self.max_len)  # (T,)
        items, catalog = self._lookup(ids, None, with_catalog)  # (T, D)
        x = items * self.emb_scale + self.pos_emb(pos)  # (T, D)
        x = self.emb_dropout(x)
        for block in self.blocks:
            x = block(x, packing)
        x = self.ln_out(x)  # (T, D)
        return (x, catalog) if with_catalog else x

    def catalog(self) -> torch.Tensor:
        """Item embeddings without the padding row, (n_items, D): column i <-> item id i + 1."""
        return self.item_emb.weight[1:]
