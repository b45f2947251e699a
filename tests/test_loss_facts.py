"""The loss registry's facts (core/losses/registry.py): from a configured loss and from its label."""

from __future__ import annotations

import functools
import json
import logging
import re

import numpy as np
import pytest
import torch

from core.losses import LOSSES, cce, ce, flash_ce, flex_ce, loss_facts, loss_name, registry, sampled_ce
from core.losses.registry import loss_ran

CONFIGURED = [ce, cce, functools.partial(cce, filter_eps=None), functools.partial(cce, forward="library"),
              functools.partial(cce, filter_eps=None, forward="library"), flash_ce, flex_ce,
              functools.partial(sampled_ce, n_negatives=256, sampler="popularity", logq=True)]


def test_every_registered_loss_has_facts():
    for spec in LOSSES.values():
        assert spec.facts is not None


@pytest.mark.parametrize("loss_fn", CONFIGURED, ids=lambda f: loss_name(f))
def test_a_label_has_the_facts_of_the_loss_it_names(loss_fn):
    assert loss_facts(loss_name(loss_fn)) == loss_facts(loss_fn)


def test_facts():
    exact = {loss_name(f) for f in CONFIGURED if loss_facts(f).exact}
    assert exact == {"ce", "cce_exact", "cce_exact[forward=library]", "flash_ce", "flex_ce"}
    # what train.catalog_parallel accepted by name before the registry carried it
    assert {loss_name(f) for f in CONFIGURED if loss_facts(f).catalog_parallel} == {"ce", "cce_exact"}
    assert not loss_facts("cce[forward=library]").sync_free and loss_facts("cce").sync_free
    assert loss_facts("cce").kernels == "cut_cross_entropy" and loss_facts("flash_ce").kernels is None
    assert not loss_facts("ce").cuda_only and loss_facts("flash_ce").cuda_only
    assert loss_facts("sampled_ce_3000_uniform") == loss_facts(sampled_ce)


def test_an_unknown_label_is_refused():
    with pytest.raises(ValueError, match="not the label of a registered loss"):
        loss_facts("my_loss")


# --- issue 23.9: records name the loss asked and the loss that ran -------------------------------


def test_loss_ran_names_the_stand_in_off_cuda_and_the_loss_itself_on_cuda(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert loss_ran(flash_ce, "cpu") == loss_ran(flex_ce, torch.device("cpu")) == "ce"
    assert loss_ran(cce, "cpu") in ("cce_reference", "ce")  # "ce": cut_cross_entropy cannot be imported
    for loss_fn in CONFIGURED:  # where its own kernels run, what ran is what was asked
        assert loss_ran(loss_fn, "cuda:0") == loss_name(loss_fn)
    assert loss_ran(ce, "cpu") == "ce" and loss_ran(sampled_ce, "cpu") == loss_name(sampled_ce)


@pytest.mark.parametrize("loss_fn, logger", [(flash_ce, "core.losses.flash_ce"), (flex_ce, "core.losses.flex")])
def test_a_fallback_is_logged_under_its_own_loss(monkeypatch, caplog, loss_fn, logger):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(registry, "_warned", set())  # said once per process: say it again here
    e, c, targets = torch.randn(4, 8), torch.randn(6, 8), torch.tensor([0, 1, 2, 3])
    with caplog.at_level(logging.WARNING, logger="core.losses"):
        loss_fn(e, c, targets)
    assert [r.name for r in caplog.records] == [logger]
    assert "plain softmax cross-entropy" in caplog.records[0].getMessage()


def test_metrics_json_records_the_loss_asked_and_the_loss_that_ran(tmp_path, monkeypatch):
    from core.data.shards import load_sequences
    from core.data.synthetic import write_synthetic
    from core.model import SASRec
    from core.training import train_flat

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    data = load_sequences(write_synthetic(tmp_path / "data", preset="tiny", n_users=100))
    fast = dict(model_fn=functools.partial(SASRec, dim=16, n_blocks=1), batch_size=64, max_len=10,
                device="cpu", show_progress=False, epochs=1)
    train_flat(data=data, out_dir=tmp_path / "run", loss_fn=flash_ce, **fast)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert (metrics["loss"], metrics["loss_ran"]) == ("flash_ce", "ce")
    assert "flash_ce (running ce) loss on cpu" in (tmp_path / "run" / "log.txt").read_text()


# --- issue 23.10: a loss setting the kernels would not take is refused before training ----------


@pytest.mark.parametrize("eps", ["bogus", -1.0, float("nan"), True])
def test_a_bad_filter_eps_is_refused_by_the_call_and_before_training(eps):
    from core.data.shards import SequenceData
    from core.losses import bind_to_data

    message = rf"^cce\.filter_eps must be None, 'high', 'auto' or a number >= 0, got {re.escape(repr(eps))}"
    with pytest.raises(ValueError, match=message):
        cce(torch.randn(4, 8), torch.randn(6, 8), torch.tensor([0, 1, 2, 3]), filter_eps=eps)
    data = SequenceData(offsets=np.array([0, 3, 6]), items=np.array([1, 2, 3, 3, 2, 1], dtype=np.int32),
                        n_users=2, n_items=3)
    with pytest.raises(ValueError, match=message):
        bind_to_data(functools.partial(cce, filter_eps=eps), data)


@pytest.mark.parametrize("value, shown", [("'bogus'", "'bogus'"), ("-1.0", "-1.0")])
def test_run_py_refuses_a_bad_filter_eps_in_one_line_and_makes_no_folder(tmp_path, capsys, value, shown):
    from experiments import run

    bindings = [f"dataset.cache_dir = '{tmp_path / 'cache'}'", "dataset.synthetic_overrides = {'n_users': 150}",
                "train.device = 'cpu'", "train.show_progress = False", f"cce.filter_eps = {value}"]
    out = tmp_path / "runs" / "r"
    assert run.main(["--gin", "gin/quickstart.gin", "--gin", "gin/loss/cce.gin", "--out", str(out),
                     *(a for b in bindings for a in ("--gin_bindings", b))]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert err == [f"error: bad gin config: cce.filter_eps must be None, 'high', 'auto' or a number >= 0, got {shown}"]
    assert not (tmp_path / "runs").exists()
