"""SASRec (Kang & McAuley, 2018): a causal Transformer over a user's item sequence.

Read top to bottom: attention block -> feed-forward -> block -> the model. The item embedding
is also the output head: ``forward`` returns hidden states ``e`` and ``catalog()`` returns the
item embeddings ``c``, so any loss ``loss(e, c, targets)`` scores the whole catalog without
the model knowing which loss it is.

Padding convention (shared with ``core.data.batching``): sequences are LEFT-padded with item id
0 to length ``L <= max_len``, so the most recent item is always the last column.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import gin
import torch
import torch.nn.functional as F
from torch import nn


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

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x (B, L, D), mask (B, 1, L, L) bool, True = may attend -> (B, L, D)."""
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
        """(B, L, D) -> (B, L, D)."""
        return self.dropout(self.proj(self.dropout(F.relu(self.fc(x)))))


class Block(nn.Module):
    """Pre-LayerNorm Transformer block: x + attn(ln(x)), then x + ffn(ln(x))."""

    def __init__(self, *, dim: int, n_heads: int, dropout: float):
        super().__init__()
        self.ln_attn = nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim=dim, n_heads=n_heads, dropout=dropout)
        self.ln_ffn = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim=dim, dropout=dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x (B, L, D), mask (B, 1, L, L) -> (B, L, D)."""
        x = x + self.attn(self.ln_attn(x), mask)
        return x + self.ffn(self.ln_ffn(x))


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
    ):
        super().__init__()
        if n_items < 1:
            raise ValueError(f"n_items must be >= 1, got {n_items}")
        if dim < 1 or n_heads < 1 or n_blocks < 0 or not 0.0 <= dropout < 1.0:
            raise ValueError(f"SASRec needs dim >= 1, n_heads >= 1, n_blocks >= 0 and 0 <= dropout < 1; "
                             f"got dim={dim}, n_heads={n_heads}, n_blocks={n_blocks}, dropout={dropout}")
        self.n_items = n_items
        self.max_len = max_len
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

    def forward(self, seq: torch.Tensor, *, shares=None) -> torch.Tensor:
        """seq (B, L) int64 item ids, left-padded with 0 -> hidden states (B, L, D).

        Row b, column j is the representation after seeing seq[b, :j+1]; score it against
        ``catalog()`` to predict the next item. Padded columns hold finite values that mean
        nothing; callers score only positions with a real target. ``shares``: only when the
        item table is split over ranks (``core.parallel.catalog.ShardedItemEmbedding``), every
        rank's share of the batch, which its lookup (a collective) takes as an argument.
        """
        B, L = seq.shape
        if L > self.max_len:
            raise ValueError(f"sequence length {L} exceeds max_len={self.max_len}")
        # Positions are counted from the right end (the last item always gets max_len - 1),
        # so a sequence's real items get the same positions however much padding precedes them.
        pos = torch.arange(self.max_len - L, self.max_len, device=seq.device)  # (L,)
        items = self.item_emb(seq) if shares is None else self.item_emb(seq, shares)  # (B, L, D)
        x = items * self.emb_scale + self.pos_emb(pos)  # (B, L, D)
        x = self.emb_dropout(x)

        # Causal mask AND "key is a real item": real positions never look at padding, so their
        # outputs do not depend on how long the padding is. The diagonal stays open so that a
        # padded query (whose keys are all padding) gets a finite softmax instead of NaN.
        real = seq != 0  # (B, L)
        causal = torch.ones(L, L, dtype=torch.bool, device=seq.device).tril()  # (L, L)
        eye = torch.eye(L, dtype=torch.bool, device=seq.device)  # (L, L)
        mask = (causal & real[:, None, :]) | eye  # (B, L, L)
        mask = mask[:, None]  # (B, 1, L, L): broadcast over heads

        for block in self.blocks:
            x = block(x, mask)
        return self.ln_out(x)  # (B, L, D)

    def catalog(self) -> torch.Tensor:
        """Item embeddings without the padding row, (n_items, D): column i <-> item id i + 1."""
        return self.item_emb.weight[1:]
