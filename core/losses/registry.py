"""One source for loss names: a loss registers itself, and its name comes from what is bound.

Every loss is ``loss(e (N, D), c (V, D), targets (N,)) -> scalar`` (the mean NLL over targets
that are not ``IGNORE_INDEX``), gin-configurable, and registered with ``@register``, which
gives it

- ``name(settings) -> str``: the label in metrics.json, reports and benchmarks, computed from the
  settings the call actually uses (signature defaults, then gin bindings, then a
  ``functools.partial``'s keywords), e.g. ``cce`` with ``filter_eps=None`` -> ``cce_exact``;
- optionally ``bind_data(loss_fn, data) -> loss_fn``: what a loss needs from the training data
  before the first step (e.g. item popularity for a sampler); training calls ``bind_to_data``;
- optionally ``check(settings, n_items)``: refuses settings the loss cannot run with on a
  catalog of ``n_items`` (ValueError, one line in gin's terms: ``cce.filter_eps must be ...,
  got 'bogus'``); ``bind_to_data`` calls it, so training refuses them before the first step;
- optionally ``stand_in(settings) -> str | None``: for a loss whose kernels need CUDA, the label
  of what computes it elsewhere (``ce``, ``cce_reference``; None: its own code runs there too),
  which ``loss_ran`` reports and metrics.json records as ``loss_ran``;
- ``facts(settings) -> LossFacts``: what the configured loss is (exact or approximate, sync-free,
  CUDA-only, catalog-parallel capable, whose kernels); every check that depends on the loss asks
  ``loss_facts`` (of a loss function, or of a label as metrics.json records it) instead of
  comparing names.

Adding a loss is one module in ``core/losses/`` (plus its import in ``core/losses/__init__.py``)
and one file in ``gin/loss/``. Nothing else names losses by string but display order (the
reports' ``LOSS_ORDER``, which import no torch) and the studies' plans of what to run.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass

import gin

IGNORE_INDEX = -100  # the value cut_cross_entropy and F.cross_entropy both skip

@dataclass(frozen=True)
class LossFacts:
    """What a configured loss is, for the checks that depend on it."""

    exact: bool  # the full softmax CE's loss and gradients (no gradient filter, no sampling)
    sync_free: bool  # no device->host sync: a training step with it can be captured as a CUDA graph
    cuda_only: bool  # its own kernels need CUDA; elsewhere a stand-in runs (plain CE or a reference)
    catalog_parallel: bool  # ``train.catalog_parallel`` may replace it by the sharded exact CE
    kernels: str | None = None  # the package whose kernels it runs (e.g. "cut_cross_entropy")


@dataclass(frozen=True)
class LossSpec:
    """A registered loss: the gin-configurable function, how to name a configured call, and
    its facts. ``labels``: label bases other than the function's name and the settings each
    implies (``cce_exact`` -> filter_eps None), so that a label alone gives the facts."""

    fn: Callable
    name: Callable[[dict], str]
    bind_data: Callable | None = None
    facts: Callable[[dict], LossFacts] | None = None
    labels: dict[str, dict] | None = None
    stand_in: Callable[[dict], str | None] | None = None
    check: Callable[[dict, int], None] | None = None


LOSSES: dict[str, LossSpec] = {}  # function name -> spec


def register(*, facts: LossFacts | Callable[[dict], LossFacts], name: Callable[[dict], str] | None = None,
             bind_data: Callable | None = None, labels: dict[str, dict] | None = None,
             stand_in: Callable[[dict], str | None] | None = None,
             check: Callable[[dict, int], None] | None = None):
    """Decorator: makes ``fn`` gin-configurable and registers it under its ``__name__``.

    ``facts``: the loss's ``LossFacts``, or a function of the call's settings giving them.
    ``name`` maps the call's settings (keyword-only parameters) to the label; default: the
    function's name. ``labels``: see ``LossSpec``; ``stand_in``, ``check``: see the module doc.
    """

    def wrap(fn: Callable) -> Callable:
        configurable = gin.configurable(fn)
        label = name or (lambda settings, base=fn.__name__: base)
        of = facts if callable(facts) else (lambda settings, fixed=facts: fixed)
        LOSSES[fn.__name__] = LossSpec(configurable, label, bind_data, of, labels, stand_in, check)
        return configurable

    return wrap


def _unwrap(loss_fn: Callable) -> tuple[Callable, dict]:
    """(the registered function, keywords fixed by ``functools.partial`` layers)."""
    kwargs: dict = {}
    while isinstance(loss_fn, functools.partial):
        kwargs = {**loss_fn.keywords, **kwargs}
        loss_fn = loss_fn.func
    return loss_fn, kwargs


def spec_of(loss_fn: Callable) -> LossSpec:
    """The registry entry of ``loss_fn`` (possibly a ``functools.partial`` of a registered loss)."""
    fn, _ = _unwrap(loss_fn)
    spec = LOSSES.get(getattr(fn, "__name__", ""))
    if spec is None or inspect.unwrap(spec.fn) is not inspect.unwrap(fn):
        raise ValueError(
            f"{getattr(fn, '__name__', fn)!r} is not a registered loss (known: {', '.join(sorted(LOSSES))}); "
            "register it with core.losses.registry.register"
        )
    return spec


def loss_settings(loss_fn: Callable) -> dict:
    """The keyword-only settings a call of ``loss_fn`` uses: defaults < gin bindings < partial."""
    fn, partial_kwargs = _unwrap(loss_fn)
    params = inspect.signature(inspect.unwrap(fn)).parameters.values()
    settings = {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY}
    try:
        settings.update(gin.get_bindings(fn))
    except (ValueError, KeyError):  # not gin-configurable here (e.g. a wrapped copy)
        pass
    settings.update(partial_kwargs)
    return settings


def _registered(loss_fn: Callable) -> bool:
    fn, _ = _unwrap(loss_fn)
    spec = LOSSES.get(getattr(fn, "__name__", ""))
    return spec is not None and inspect.unwrap(spec.fn) is inspect.unwrap(fn)


def loss_name(loss_fn: Callable) -> str:
    """The label of a configured loss, e.g. ``"cce_exact"``.

    An unregistered callable (a user's own function passed from Python, a test's spy) is named
    by its ``__name__``: what ran, though without settings.
    """
    if not _registered(loss_fn):
        fn, _ = _unwrap(loss_fn)
        return getattr(fn, "__name__", type(fn).__name__)
    return spec_of(loss_fn).name(loss_settings(loss_fn))


def loss_ran(loss_fn: Callable, device) -> str:
    """The label of what computes ``loss_fn`` on ``device`` (a ``torch.device`` or its name):
    ``loss_name(loss_fn)`` where the loss's own code runs, else its stand-in's (``flash_ce`` on
    a CPU -> ``ce``). Training records both: metrics.json's ``loss`` (asked) and ``loss_ran``."""
    name = loss_name(loss_fn)
    if not _registered(loss_fn) or getattr(device, "type", str(device).split(":")[0]) == "cuda":
        return name
    spec = spec_of(loss_fn)
    return (spec.stand_in and spec.stand_in(loss_settings(loss_fn))) or name


_warned: set[str] = set()


def warn_once(log: logging.Logger, message: str) -> None:
    """Logs ``message`` under the loss's own logger the first time only: a fallback is said once
    per process, not per step."""
    if message not in _warned:
        log.warning(message)
        _warned.add(message)


def _defaults(fn: Callable) -> dict:
    params = inspect.signature(inspect.unwrap(fn)).parameters.values()
    return {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY}


def _label_settings(label: str) -> tuple[LossSpec, dict]:
    """(spec, settings) a label stands for: ``cce_exact``, ``cce[forward=library]``,
    ``sampled_ce_256_uniform`` (a spec whose labels start with its function's name)."""
    base, _, rest = label.partition("[")
    given = dict(kv.split("=", 1) for kv in rest.rstrip("]").split(",") if kv) if rest else {}
    for fn_name, spec in LOSSES.items():
        implied = (spec.labels or {}).get(base)
        if implied is None and (base == fn_name or (spec.labels is None and base.startswith(fn_name + "_"))):
            implied = {}
        if implied is not None:
            return spec, {**_defaults(spec.fn), **implied, **given}
    raise ValueError(f"{label!r} is not the label of a registered loss (known: {', '.join(sorted(LOSSES))})")


def loss_facts(loss: Callable | str) -> LossFacts:
    """The facts of a configured loss function, or of a loss label (metrics.json's ``loss``)."""
    if isinstance(loss, str):
        spec, settings = _label_settings(loss)
        return spec.facts(settings)
    return spec_of(loss).facts(loss_settings(loss))


def bind_to_data(loss_fn: Callable, data) -> Callable:
    """``loss_fn`` ready for training on ``data`` (a ``SequenceData``): its settings checked
    against the catalog (the spec's ``check``), then bound (``bind_data``; most need nothing)."""
    if not _registered(loss_fn):
        return loss_fn
    spec = spec_of(loss_fn)
    if spec.check is not None:
        spec.check(loss_settings(loss_fn), data.n_items)
    return loss_fn if spec.bind_data is None else spec.bind_data(loss_fn, data)


def settings_label(base: str, settings: dict, defaults: dict) -> str:
    """``base`` plus the settings that differ from ``defaults``: ``cce[forward=library]``."""
    diff = [f"{k}={settings[k]}" for k in sorted(defaults) if k in settings and settings[k] != defaults[k]]
    return f"{base}[{','.join(diff)}]" if diff else base


# A caller whose rows include many filler rows (IGNORE_INDEX targets padding a fixed-size block,
# as the graphed step's packed buckets) says so; a loss may then skip work on them
# (``flash_ce.skips_ignored``). Elsewhere most rows are scored, and skipping costs more than it saves.
_FILLER_ROWS = contextvars.ContextVar("filler_rows", default=False)


@contextlib.contextmanager
def filler_rows(expected: bool = True):
    """Within the block, losses are told their rows include many filler rows (``expected``)."""
    token = _FILLER_ROWS.set(expected)
    try:
        yield
    finally:
        _FILLER_ROWS.reset(token)


def expects_filler_rows() -> bool:
    return _FILLER_ROWS.get()
