"""sampled_ce: loss and gradients against a float64 oracle for fixed negatives, the K = V limit
(full CE), seeded draws, the popularity sampler's distribution, bind_data, names, a training run.

Tolerances: in float64 only summation order differs from the oracle (1e-10 is a wide margin);
float32 logits over D <= 64 and K + 1 <= 61 columns round to ~1e-6 relative, so 1e-5; bf16
operands under autocast keep 8 bits (~4e-3 per logit), as in test_losses_agreement: 2e-2.
A broken variant (no collision mask, logQ sign flipped, ignored rows counted) is off by O(0.1-1).
"""

from __future__ import annotations

import functools
import json
import logging
import math
from pathlib import Path

import gin
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from core.data.shards import SequenceData
from core.losses import IGNORE_INDEX, bind_to_data, loss_name
from core.losses.sampled import (
    ItemPopularity,
    draw_negatives,
    sampled_ce,
    sampled_softmax_loss,
    train_item_counts,
)
from experiments import run
from kernels_bench.inputs import make_inputs
from kernels_bench.measure import floor_ms
from kernels_bench.providers import (
    PROVIDERS,
    Provider,
    Setup,
    _leaves,
    _sampled_reference,
    check_provider,
)

N, V, D = 37, 23, 16
GIN_FILE = Path(__file__).resolve().parents[1] / "gin" / "loss" / "sampled_ce.gin"


@pytest.fixture(autouse=True)
def clean_gin():
    """Names depend on gin bindings: every test starts and ends without any."""
    gin.clear_config()
    yield
    gin.clear_config()


def make_case(seed=0, dtype=torch.float64):
    """Operands with ignored rows, negatives that hit several rows' targets and repeat."""
    g = torch.Generator().manual_seed(seed)
    e = torch.randn(N, D, generator=g, dtype=torch.float64) * 0.5
    c = torch.randn(V, D, generator=g, dtype=torch.float64) * 0.5
    targets = torch.randint(0, V, (N,), generator=g)
    targets[[3, 10, 11, 30]] = IGNORE_INDEX
    negatives = torch.randint(0, V, (12,), generator=g)
    negatives[:3] = targets[[0, 1, 2]]  # collisions with rows 0, 1, 2 (and any row sharing them)
    negatives[3] = negatives[4]  # a repeated negative
    counts = torch.randint(1, 50, (V,), generator=g).double()
    log_q = (counts / counts.sum()).log()  # (V,) a popularity log-probability
    return e.to(dtype), c.to(dtype), targets, negatives, log_q


def oracle(e, c, targets, negatives, log_q=None) -> torch.Tensor:
    """Row by row in float64, as the formula reads: -log softmax over [target, unmasked negatives]."""
    e, c = e.double(), c.double()
    losses = []
    for i, t in enumerate(targets.tolist()):
        if t == IGNORE_INDEX:
            continue
        cols = [t] + [j for j in negatives.tolist() if j != t]  # collisions dropped = masked
        logits = torch.stack([e[i] @ c[j] for j in cols])
        if log_q is not None:
            logits = logits - log_q.double()[cols]
        losses.append(torch.logsumexp(logits, 0) - logits[0])
    return torch.stack(losses).mean()


def loss_and_grads(fn, e, c, *args, **kwargs):
    e = e.detach().clone().requires_grad_()
    c = c.detach().clone().requires_grad_()
    loss = fn(e, c, *args, **kwargs)
    loss.backward()
    return loss.detach().double(), e.grad.double(), c.grad.double()


def rel_errors(got, ref) -> list[float]:
    """|loss - ref| / max(1, |ref|) and the gradients' relative Frobenius errors."""
    loss_err = float((got[0] - ref[0]).abs() / max(1.0, float(ref[0].abs())))
    return [loss_err] + [float((g - r).norm() / r.norm()) for g, r in zip(got[1:], ref[1:])]


# --- given negatives: against the oracle ----------------------------------------------------


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
@pytest.mark.parametrize("corrected", [False, True])
def test_matches_the_oracle_with_collisions_and_ignored_rows(dtype, tol, corrected):
    e, c, t, neg, log_q = make_case(dtype=dtype)
    log_q = log_q if corrected else None
    assert (neg.unsqueeze(0) == t.unsqueeze(1)).any(1).sum() >= 3  # the case has collisions
    got = loss_and_grads(sampled_softmax_loss, e, c, t, neg, log_q=log_q)
    ref = loss_and_grads(oracle, e, c, t, neg, log_q)
    assert got[0].dtype == torch.float64 and max(rel_errors(got, ref)) < tol


def _unmasked(e, c, t, neg, log_q=None):
    keep = t != IGNORE_INDEX
    logits = torch.cat([(e[keep] * c[t[keep]]).sum(1, keepdim=True), e[keep] @ c[neg].T], 1)
    return F.cross_entropy(logits, torch.zeros(int(keep.sum()), dtype=torch.long))


def _ignored_rows_counted(e, c, t, neg, log_q=None):
    t = t.clone()
    t[t == IGNORE_INDEX] = 0
    return sampled_softmax_loss(e, c, t, neg, log_q=log_q)


def _logq_sign_flipped(e, c, t, neg, log_q=None):
    return sampled_softmax_loss(e, c, t, neg, log_q=-log_q)


def _positive_uncorrected(e, c, t, neg, log_q=None):
    correction = torch.cat([torch.zeros(len(t), 1, dtype=log_q.dtype),
                            log_q[neg].expand(len(t), -1)], 1)
    keep = t != IGNORE_INDEX
    logits = torch.cat([(e[keep] * c[t[keep]]).sum(1, keepdim=True), e[keep] @ c[neg].T], 1)
    hit = torch.cat([torch.zeros(int(keep.sum()), 1, dtype=torch.bool),
                     neg.unsqueeze(0) == t[keep].unsqueeze(1)], 1)
    logits = (logits - correction[keep]).masked_fill(hit, float("-inf"))
    return F.cross_entropy(logits, torch.zeros(int(keep.sum()), dtype=torch.long))


@pytest.mark.parametrize("broken", [_unmasked, _ignored_rows_counted, _logq_sign_flipped,
                                    _positive_uncorrected])
def test_the_oracle_check_catches_a_wrong_variant(broken):
    e, c, t, neg, log_q = make_case()
    ref = loss_and_grads(oracle, e, c, t, neg, log_q)
    assert max(rel_errors(loss_and_grads(broken, e, c, t, neg, log_q), ref)) > 1e-2


def test_whole_catalog_as_negatives_is_full_ce():
    e, c, t, _, _ = make_case()
    everything = torch.arange(V)
    got = loss_and_grads(sampled_softmax_loss, e, c, t, everything)
    full = loss_and_grads(lambda e, c: F.cross_entropy(e @ c.T, t, ignore_index=IGNORE_INDEX), e, c)
    assert max(rel_errors(got, full)) < 1e-12


def test_uniform_logq_changes_nothing():
    """A constant correction (log 1/V in every column, the target's included) cancels."""
    e, c, t, neg, _ = make_case()
    plain = sampled_softmax_loss(e, c, t, neg)
    uniform = sampled_softmax_loss(e, c, t, neg, log_q=torch.full((V,), -math.log(V), dtype=torch.float64))
    torch.testing.assert_close(plain, uniform, rtol=1e-12, atol=0)


def test_every_row_ignored_behaves_like_ce():
    e, c, _, neg, _ = make_case(dtype=torch.float32)
    none = torch.full((N,), IGNORE_INDEX)
    from core.losses import ce

    assert math.isnan(float(ce(e, c, none))) and math.isnan(float(sampled_softmax_loss(e, c, none, neg)))


def test_autocast_logits_in_bf16_softmax_in_fp32():
    e, c, t, neg, _ = make_case(dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = loss_and_grads(sampled_softmax_loss, e, c, t, neg)
    assert got[0].dtype == torch.float64  # (loss_and_grads casts); the loss itself:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert sampled_softmax_loss(e, c, t, neg).dtype == torch.float32
    ref = loss_and_grads(oracle, e.bfloat16().float(), c.bfloat16().float(), t, neg)
    assert max(rel_errors(got, ref)) < 2e-2


# --- the draw --------------------------------------------------------------------------------


def test_seeded_draws_reproduce_and_the_loss_uses_them():
    e, c, t, _, _ = make_case(dtype=torch.float32)
    torch.manual_seed(7)
    first = draw_negatives(500, V, device=torch.device("cpu"))
    torch.manual_seed(7)
    assert torch.equal(first, draw_negatives(500, V, device=torch.device("cpu")))
    assert first.min() >= 0 and first.max() < V and len(first.unique()) == V  # all columns reachable
    torch.manual_seed(8)
    assert not torch.equal(first, draw_negatives(500, V, device=torch.device("cpu")))

    torch.manual_seed(7)
    loss = sampled_ce(e, c, t, n_negatives=500)
    torch.testing.assert_close(loss, sampled_softmax_loss(e, c, t, first), rtol=0, atol=0)


def test_popularity_draws_follow_the_counts():
    """Chi-square of 100,000 seeded draws against the counts (df = 5 nonzero classes - 1: the
    0.99999 quantile is 28.5); columns of count 0 (the first and the last) are never drawn."""
    counts = torch.tensor([0, 1, 2, 5, 10, 3, 79, 0], dtype=torch.float64)
    cdf, _ = ItemPopularity(counts).tables(torch.device("cpu"))
    torch.manual_seed(0)
    draws = draw_negatives(100_000, len(counts), device=torch.device("cpu"), cdf=cdf)
    observed = torch.bincount(draws, minlength=len(counts)).double()
    assert observed[0] == 0 and observed[-1] == 0
    expected = counts / counts.sum() * len(draws)
    nz = counts > 0
    chi2 = float(((observed[nz] - expected[nz]) ** 2 / expected[nz]).sum())
    assert chi2 < 28.5, (observed, expected)
    # The check has power: the uniform sampler fails it by orders of magnitude.
    uniform = torch.bincount(draw_negatives(100_000, len(counts), device=torch.device("cpu")),
                             minlength=len(counts)).double()
    assert float(((uniform[nz] - expected[nz]) ** 2 / expected[nz]).sum()) > 1e4


def test_popularity_loss_uses_its_draws_and_log_q():
    e, c, t, _, _ = make_case(dtype=torch.float32)
    counts = torch.arange(1, V + 1)
    pop = ItemPopularity(counts)
    cdf, log_q = pop.tables(torch.device("cpu"))
    torch.manual_seed(3)
    negatives = draw_negatives(40, V, device=torch.device("cpu"), cdf=cdf)
    torch.manual_seed(3)
    got = sampled_ce(e, c, t, n_negatives=40, sampler="popularity", logq=True, popularity=pop)
    torch.testing.assert_close(got, oracle(e, c, t, negatives, log_q).float(), rtol=1e-5, atol=0)
    torch.testing.assert_close(log_q.double(), (counts / counts.sum()).double().log())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("sampler", ["uniform", "popularity"])
def test_the_draw_and_the_loss_are_capturable_as_a_cuda_graph(sampler):
    """No host sync: forward and backward captured once (after an eager warm-up on a side
    stream, as core's graph step does); every replay draws fresh negatives, a seeded replay
    repeats its draw, and the replayed loss is the eager loss on the replay's negatives."""
    dev = torch.device("cuda")
    e, c, t, _, _ = make_case(dtype=torch.float32)
    e, c, t = e.to(dev).requires_grad_(), c.to(dev).requires_grad_(), t.to(dev)
    pop = ItemPopularity(torch.arange(1, V + 1))
    cdf, log_q = pop.tables(dev) if sampler == "popularity" else (None, None)
    registered = functools.partial(sampled_ce, n_negatives=64, sampler=sampler, logq=True, popularity=pop)

    def step():
        negatives = draw_negatives(64, V, device=dev, cdf=cdf)
        loss = sampled_softmax_loss(e, c, t, negatives, log_q=log_q)
        (loss + registered(e, c, t)).backward()
        return negatives, loss.detach()

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    e.grad = c.grad = None
    with torch.cuda.graph(graph):
        negatives, loss = step()

    torch.manual_seed(1)
    graph.replay()
    first = negatives.clone()
    torch.testing.assert_close(loss, sampled_softmax_loss(e.detach(), c.detach(), t, first, log_q=log_q))
    graph.replay()
    assert not torch.equal(first, negatives)
    torch.manual_seed(1)
    graph.replay()
    assert torch.equal(first, negatives)


# --- settings, names, bind_data --------------------------------------------------------------


def test_names_are_a_function_of_the_settings():
    assert loss_name(sampled_ce) == "sampled_ce_3000_uniform"
    assert loss_name(functools.partial(sampled_ce, n_negatives=256, sampler="popularity",
                                       logq=True)) == "sampled_ce_256_popularity_logq"
    gin.parse_config_files_and_bindings([str(GIN_FILE)], ["sampled_ce.n_negatives = 256"],
                                        skip_unknown=True)  # train.loss_fn: train is not imported
    assert loss_name(sampled_ce) == "sampled_ce_256_uniform"


@pytest.mark.parametrize("settings", [dict(n_negatives=0), dict(n_negatives=2.5),
                                      dict(sampler="zipf"), dict(sampler="popularity")])
def test_bad_settings_are_one_clear_error(settings):
    e, c, t, _, _ = make_case(dtype=torch.float32)
    with pytest.raises(ValueError, match=r"sampled_ce(\.\w+ must be|: sampler='popularity' needs)"):
        sampled_ce(e, c, t, **settings)
    if "n_negatives" in settings or settings["sampler"] != "popularity":  # before the first step
        with pytest.raises(ValueError, match=r"sampled_ce\.\w+ must be"):
            bind_to_data(functools.partial(sampled_ce, **settings), tiny_data())


def tiny_data() -> SequenceData:
    """Three users; training sequences [1, 2, 3], [2, 2], [3] (the last two items held out)."""
    seqs = [[1, 2, 3, 4, 5], [2, 2, 4, 1], [3, 1, 5]]
    offsets = np.cumsum([0] + [len(s) for s in seqs]).astype(np.int64)
    return SequenceData(offsets=offsets, items=np.concatenate(seqs).astype(np.int32), n_users=3, n_items=5)


def test_bind_data_gives_the_training_counts():
    data = tiny_data()
    assert train_item_counts(data).tolist() == [1, 3, 2, 0, 0]  # columns = item ids 1..5
    uniform = functools.partial(sampled_ce, n_negatives=8)
    assert bind_to_data(uniform, data) is uniform  # nothing to bind
    loss_fn = functools.partial(sampled_ce, n_negatives=8, sampler="popularity", logq=True)
    bound = bind_to_data(loss_fn, data)
    assert bound.keywords["popularity"].counts.tolist() == [1, 3, 2, 0, 0]
    assert loss_name(bound) == loss_name(loss_fn) == "sampled_ce_8_popularity_logq"
    e, c = torch.randn(4, 3), torch.randn(5, 3)
    torch.manual_seed(0)
    assert torch.isfinite(bound(e, c, torch.tensor([0, 1, 2, IGNORE_INDEX])))


# --- kernels_bench providers ----------------------------------------------------------------


def _bench_inputs():
    """The sweep's gate shape (V = 1000, N = 256, one target in 8 ignored), trained-like logits
    (peaked softmax: an accidental hit left unmasked moves the loss by O(0.1))."""
    b = make_inputs("trained", n=256, v=1000, d=64, device=torch.device("cpu"), seed=1)
    targets = b.targets.clone()
    targets[::8] = IGNORE_INDEX
    return b, targets


@pytest.mark.parametrize("k", [256, 3000])
def test_providers_pass_the_gate_and_floor_on_k_columns(k):
    b, targets = _bench_inputs()
    torch.manual_seed(0)
    check = check_provider(f"sampled_ce_{k}_uniform", b.e, b.c, targets)
    assert check.passed, check
    spec = PROVIDERS[f"sampled_ce_{k}_uniform"]
    assert spec.logit_columns == k + 1 and not spec.cuda_only
    # The arithmetic floor counts K + 1 columns: at a large catalog, V's floor would be 1000x off.
    assert floor_ms(n=256, v=spec.logit_columns, d=64, mode="fw", tflops=1.0) < 1e-3 * floor_ms(
        n=256, v=2**22, d=64, mode="fw", tflops=1.0)


def test_the_gate_rejects_a_sampled_provider_without_the_collision_mask():
    b, targets = _bench_inputs()

    def unmasked(e, c, t):
        e_, c_ = _leaves(e, c, torch.bfloat16)
        last = {}

        def forward():
            last["negatives"] = neg = draw_negatives(256, len(c_), device=e_.device)
            keep = t != IGNORE_INDEX
            logits = torch.cat([(e_[keep] * c_[t[keep]]).sum(1, keepdim=True),
                                e_[keep] @ c_[neg].T], 1).float()
            return F.cross_entropy(logits, torch.zeros(int(keep.sum()), dtype=torch.long))

        return Setup(forward, (e_, c_), lambda e64, c64: _sampled_reference(e64, c64, t, last["negatives"]))

    torch.manual_seed(0)
    bad = check_provider("unmasked", b.e, b.c, targets, provider=Provider(unmasked, torch.bfloat16))
    assert not bad.passed and bad.loss_err > bad.tol_loss


# --- training --------------------------------------------------------------------------------


def _train(out, cache, *bindings, resume=False) -> int:
    """experiments/run.py on 150 'tiny' users, CPU, 64 uniform negatives unless bound otherwise."""
    bindings = [f"dataset.cache_dir = '{cache}'", "dataset.synthetic_overrides = {'n_users': 150}",
                "train.batch_size = 64", "train.device = 'cpu'", "train.show_progress = False",
                "sampled_ce.n_negatives = 64", *bindings]
    gin_files = [] if resume else ["--gin", "gin/quickstart.gin", "--gin", "gin/loss/sampled_ce.gin"]
    return run.main([*gin_files, "--out", str(out), *(["--resume"] if resume else []),
                     *(a for b in bindings for a in ("--gin_bindings", b))])


@pytest.mark.parametrize("sampler, logq", [("uniform", False), ("popularity", True)])
def test_a_training_run_names_its_loss(sampler, logq, tmp_path):
    """One epoch through experiments/run.py: training binds the popularity counts itself."""
    out = tmp_path / "run"
    assert _train(out, tmp_path / "cache", "train.epochs = 1", f"sampled_ce.sampler = '{sampler}'",
                  f"sampled_ce.logq = {logq}") == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["loss"] == f"sampled_ce_64_{sampler}" + ("_logq" if logq else "")
    assert math.isfinite(metrics["test"]["NDCG@10"])


def test_a_resumed_run_draws_the_negatives_of_the_uninterrupted_one(tmp_path):
    """The draws come from torch's RNG, which checkpoints carry: 1 + 1 epochs == 2 epochs."""
    cache = tmp_path / "cache"
    assert _train(tmp_path / "full", cache, "train.epochs = 2") == 0
    assert _train(tmp_path / "cut", cache, "train.epochs = 1") == 0
    assert _train(tmp_path / "cut", cache, "train.epochs = 2", resume=True) == 0
    losses = [[json.loads(line)["train_loss"] for line in (tmp_path / r / "history.jsonl").open()]
              for r in ("full", "cut")]
    assert len(losses[0]) == 2 and losses[0] == losses[1]


def test_more_negatives_than_items_is_said_once_under_the_sampled_logger(monkeypatch, caplog):
    """Issue 23.10: 100,000 negatives on a 500-item catalog ran silently. It is said (once, in
    log.txt), not refused: the project's ml100k configs draw 3,000 of 1,682 items on purpose."""
    from core.losses import registry

    monkeypatch.setattr(registry, "_warned", set())
    e, c, t = torch.randn(4, 8), torch.randn(500, 8), torch.tensor([0, 1, 2, 3])
    with caplog.at_level(logging.WARNING, logger="core.losses"):
        sampled_ce(e, c, t, n_negatives=500)  # as many as the catalog: nothing to say
        assert caplog.records == []
        for _ in range(2):
            sampled_ce(e, c, t, n_negatives=100_000)
    assert [r.name for r in caplog.records] == ["core.losses.sampled"]
    assert "sampled_ce.n_negatives = 100000 exceeds the catalog's 500 items" in caplog.text
