"""Ranking metrics against hand-computed values and a per-user brute-force oracle."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from core.metrics import RankingMetrics, item_surprisal, popularity_scores

# Six items, two users; item ids are column + 1.
SCORES = torch.tensor(
    [
        [0.1, 0.9, 0.5, 0.3, 0.7, 0.0],  # user 0: order 2, 5, 3, 4, 1, 6
        [0.8, 0.3, 0.2, 0.6, 0.1, 0.0],  # user 1: order 1, 4, 2, 3, 5, 6
    ]
)
TARGETS = torch.tensor([3, 1])  # user 0: rank 3; user 1: rank 1
# N = 8 training users; pop by item id (index 0 = padding): s = -log2(pop/8)/3, s = 1 for pop 0
COUNTS = np.array([0, 8, 4, 2, 1, 0, 2])
S = {1: 0.0, 2: 1 / 3, 3: 2 / 3, 4: 1.0, 5: 1.0, 6: 2 / 3}


def make(ks=(1, 3), counts=COUNTS, n_items=6, n_train_users=8) -> RankingMetrics:
    return RankingMetrics(n_items=n_items, ks=ks, item_user_counts=counts, n_train_users=n_train_users)


def test_hand_computed_k1_k3():
    m = make()
    m.update(SCORES.clone(), TARGETS)
    got = m.compute()
    expected = {
        "HitRate@1": 0.5,
        "NDCG@1": (0 + 1 / math.log2(2)) / 2,
        "MRR@1": (0 + 1) / 2,
        "Coverage@1": 2 / 6,  # items 2 and 1
        "Surprisal@1": (S[2] + S[1]) / 2,
        "HitRate@3": 1.0,
        "NDCG@3": (1 / math.log2(4) + 1) / 2,  # 0.75; log2(rank) would give 1/log2(3)
        "MRR@3": (1 / 3 + 1) / 2,
        "Coverage@3": 5 / 6,  # {2, 5, 3} | {1, 4, 2}: item 6 never recommended
        "Surprisal@3": ((S[2] + S[5] + S[3]) / 3 + (S[1] + S[4] + S[2]) / 3) / 2,
    }
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-12), key
    assert got["NDCG@3"] == pytest.approx(0.75)
    assert got["Surprisal@3"] == pytest.approx(5 / 9)


def test_ndcg_uses_log2_of_one_plus_rank():
    # rank 2 -> 1/log2(3) = 0.6309; 1/log2(2) = 1 would mean log2(rank) was used
    m = make(ks=(3,))
    m.update(torch.tensor([[0.5, 0.9, 0.1, 0.0, 0.0, 0.0]]), torch.tensor([1]))
    assert m.compute()["NDCG@3"] == pytest.approx(1 / math.log2(3))
    assert m.compute()["MRR@3"] == pytest.approx(0.5)


def test_ties_count_in_favour_of_the_target():
    m = make(ks=(1, 3))
    scores = torch.tensor([[0.5, 0.5, 0.5, 0.1, 0.0, 0.0], [0.5, 0.5, 0.2, 0.2, 0.0, 0.0]])
    # user 0: nothing strictly above item 2 -> rank 1; user 1: items 1, 2 above item 4 -> rank 3
    m.update(scores, torch.tensor([2, 4]))
    got = m.compute()
    assert got["HitRate@1"] == pytest.approx(0.5)
    assert got["MRR@3"] == pytest.approx((1 + 1 / 3) / 2)


def test_history_masking():
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.6, 0.0, 0.0]])
    target = torch.tensor([3])

    plain = make(ks=(1, 3))
    plain.update(scores.clone(), target)
    assert plain.compute()["MRR@3"] == pytest.approx(1 / 3)

    masked = make(ks=(1, 3))
    masked.update(scores.clone(), target, history=(torch.tensor([0]), torch.tensor([1])))
    got = masked.compute()
    assert got["MRR@3"] == pytest.approx(1 / 2)  # item 1 no longer ranks above the target
    assert got["Coverage@1"] == pytest.approx(1 / 6)  # top-1 is item 2 now, not item 1
    assert got["Surprisal@1"] == pytest.approx(S[2])


def test_target_in_history_is_masked_too():
    m = make(ks=(3,))
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.6, 0.5, 0.4]])
    m.update(scores, torch.tensor([1]), history=(torch.tensor([0]), torch.tensor([1])))
    assert m.compute()["HitRate@3"] == 0.0
    assert scores[0, 0] == float("-inf")  # documented: masking happens in place


def test_history_rows_index_the_batch():
    m = make(ks=(1,))
    scores = SCORES.clone()
    # mask item 2 for user 0 only: user 0's top-1 becomes item 5, user 1 keeps item 1
    m.update(scores, TARGETS, history=(torch.tensor([0]), torch.tensor([2])))
    assert m.compute()["Surprisal@1"] == pytest.approx((S[5] + S[1]) / 2)
    assert scores[1, 1] == pytest.approx(0.3)


def test_masked_items_never_count_as_recommendations():
    # 3 items, k = 3, two of them masked: only one real recommendation is left
    counts = np.array([0, 1, 2, 2])
    m = make(ks=(3,), counts=counts, n_items=3, n_train_users=4)
    history = (torch.tensor([0, 0]), torch.tensor([1, 2]))
    m.update(torch.tensor([[0.3, 0.2, 0.1]]), torch.tensor([3]), history=history)
    got = m.compute()
    assert got["Coverage@3"] == pytest.approx(1 / 3)
    assert got["Surprisal@3"] == pytest.approx(0.5)  # item 3 alone: -log2(2/4) / log2(4)
    assert got["HitRate@3"] == 1.0


def test_surprisal_definition():
    s = item_surprisal(COUNTS, n_train_users=8)
    assert s.dtype == torch.float64
    np.testing.assert_allclose(s.numpy(), [S[i] for i in range(1, 7)], atol=1e-12)
    with pytest.raises(ValueError):
        item_surprisal(np.array([0, 1]), n_train_users=1)
    with pytest.raises(ValueError):
        item_surprisal(np.array([0, 9]), n_train_users=8)


def oracle(scores: np.ndarray, targets: np.ndarray, history: list[set], ks, surprisal, n_items):
    """Per-user Python loops, straight from the definitions."""
    out = {}
    n = len(targets)
    for k in ks:
        hit = ndcg = mrr = surp = 0.0
        seen = set()
        for u in range(n):
            row = scores[u].astype(np.float64).copy()
            for item in history[u]:
                row[item - 1] = -np.inf
            rank = 1 + int((row > row[targets[u] - 1]).sum())
            if rank <= k:
                hit += 1
                ndcg += 1 / np.log2(1 + rank)
                mrr += 1 / rank
            top = np.argsort(-row, kind="stable")[:k]
            seen.update(top.tolist())
            surp += surprisal[top].mean()
        out |= {
            f"HitRate@{k}": hit / n,
            f"NDCG@{k}": ndcg / n,
            f"MRR@{k}": mrr / n,
            f"Coverage@{k}": len(seen) / n_items,
            f"Surprisal@{k}": surp / n,
        }
    return out


@pytest.mark.parametrize("batch_sizes", [(64,), (7, 7, 50), (1,) * 64])
def test_random_against_oracle_and_batch_size_invariance(batch_sizes):
    gen = np.random.default_rng(0)
    n_users, n_items, ks = 64, 40, (1, 5, 10)
    # distinct scores so that top-k lists are unambiguous for the oracle's Coverage/Surprisal
    scores = gen.permutation(n_users * n_items).reshape(n_users, n_items).astype(np.float32)
    targets = gen.integers(1, n_items + 1, size=n_users)
    history = [
        set(gen.choice(np.arange(1, n_items + 1), size=gen.integers(0, 6), replace=False).tolist())
        for _ in range(n_users)
    ]
    counts = np.concatenate([[0], gen.integers(0, 31, size=n_items)])
    surprisal = item_surprisal(counts, n_train_users=30).numpy()
    expected = oracle(scores, targets, history, ks, surprisal, n_items)

    m = make(ks=ks, counts=counts, n_items=n_items, n_train_users=30)
    start = 0
    for size in batch_sizes:
        stop = min(start + size, n_users)
        rows = [r - start for r in range(start, stop) for _ in history[r]]
        items = [i for r in range(start, stop) for i in sorted(history[r])]
        m.update(
            torch.from_numpy(scores[start:stop]).clone(),
            torch.from_numpy(targets[start:stop]),
            history=(torch.tensor(rows, dtype=torch.int64), torch.tensor(items, dtype=torch.int64)),
        )
        start = stop
    assert start == n_users
    got = m.compute()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-12), key


def test_popularity_scores_rank_with_id_tie_break():
    # counts by item id (0 = padding): items 1..4 have 5, 9, 5, 1 users
    scores = popularity_scores(np.array([0, 5, 9, 5, 1]))
    assert scores.dtype == torch.float32
    assert scores.tolist() == [3.0, 4.0, 2.0, 1.0]  # item 2 best; item 1 beats item 3 on the tie


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="n_items"):
        make(ks=(7,))
    with pytest.raises(ValueError, match="n_items"):
        make(counts=np.array([0, 1, 2]))
    m = make()
    with pytest.raises(ValueError, match="columns"):
        m.update(torch.zeros(2, 5), TARGETS)
    with pytest.raises(ValueError, match="before any update"):
        m.compute()


def test_reset_forgets_users():
    m = make()
    m.update(SCORES.clone(), TARGETS)
    m.reset()
    m.update(SCORES[1:].clone(), TARGETS[1:])
    assert m.compute()["HitRate@1"] == 1.0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    cpu, gpu = make(), make()
    cpu.update(SCORES.clone(), TARGETS, history=(torch.tensor([0]), torch.tensor([2])))
    gpu.update(SCORES.cuda(), TARGETS.cuda(), history=(torch.tensor([0]).cuda(), torch.tensor([2]).cuda()))
    assert gpu.compute() == pytest.approx(cpu.compute())


def test_nan_scores_are_refused_not_ranked_first():
    metrics = make()
    scores = torch.full((2, 6), float("nan"))
    with pytest.raises(ValueError, match="NaN"):
        metrics.update(scores, torch.tensor([1, 2]))
