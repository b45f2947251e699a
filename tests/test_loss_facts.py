"""The loss registry's facts (core/losses/registry.py): from a configured loss and from its label."""

from __future__ import annotations

import functools

import pytest

from core.losses import LOSSES, cce, ce, flash_ce, flex_ce, loss_facts, loss_name, sampled_ce

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
