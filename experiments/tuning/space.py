"""A tuning study's search space, read from a gin file (``gin/tune/*.gin``), not from code.

A space file binds ``search_space``: ``params`` maps a gin binding to its range, ``loss_params``
adds the ranges of one loss (``gin/tune/sampled_ce.gin`` includes ``sasrec.gin`` and binds it),
``fixed`` pins bindings for every trial (how long a trial may train). A range is a tuple:

- ``('choice', [64, 128, 256])``: one of the values (Optuna's categorical);
- ``('float', 0.0, 0.6)`` / ``('log', 1e-4, 5e-3)``: uniform / log-uniform in [low, high].

A sampled setting is a dict binding -> value; ``invalid_reason`` names why it cannot train
(e.g. more heads than the width divides, more negatives than the catalog has items), and the
study records that trial as skipped with the reason instead of running it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import gin

KINDS = ("choice", "float", "log")


class SpaceError(ValueError):
    """A space file that cannot be used; printed as one ``error:`` line."""


@dataclass(frozen=True)
class Param:
    """One searched binding: ``kind`` in KINDS, ``values`` the choices or (low, high)."""

    binding: str
    kind: str
    values: tuple

    def holds(self, value) -> bool:
        """Whether ``value`` is one this param can take (a default to try first must be)."""
        if self.kind == "choice":
            return value in self.values
        return isinstance(value, (int, float)) and not isinstance(value, bool) and \
            self.values[0] <= value <= self.values[1]

    def suggest(self, trial):
        """The trial's value (Optuna names the parameter after the binding)."""
        if self.kind == "choice":
            return trial.suggest_categorical(self.binding, list(self.values))
        low, high = self.values
        return trial.suggest_float(self.binding, low, high, log=self.kind == "log")


@dataclass(frozen=True)
class Space:
    """What ``search_space`` bound: the searched params and the fixed bindings."""

    params: tuple[Param, ...]
    fixed: dict

    def suggest(self, trial) -> dict:
        """binding -> value of every searched param for ``trial``."""
        return {p.binding: p.suggest(trial) for p in self.params}


def _param(binding: str, spec) -> Param:
    if not isinstance(binding, str) or "." not in binding:
        raise SpaceError(f"search space key {binding!r} is not a gin binding such as 'SASRec.dim'")
    if not isinstance(spec, (tuple, list)) or len(spec) < 2 or spec[0] not in KINDS:
        raise SpaceError(f"search space {binding}: expected ('choice', [values]), ('float', low, high) "
                         f"or ('log', low, high), got {spec!r}")
    kind = spec[0]
    if kind == "choice":
        if len(spec) != 2 or not isinstance(spec[1], (list, tuple)) or not spec[1]:
            raise SpaceError(f"search space {binding}: 'choice' needs a non-empty list of values")
        return Param(binding, kind, tuple(spec[1]))
    if len(spec) != 3 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in spec[1:]):
        raise SpaceError(f"search space {binding}: {kind!r} needs two finite numbers (low, high)")
    low, high = float(spec[1]), float(spec[2])
    if not low < high or (kind == "log" and low <= 0):
        raise SpaceError(f"search space {binding}: need low < high{' and low > 0' if kind == 'log' else ''}, "
                         f"got ({low}, {high})")
    return Param(binding, kind, (low, high))


def search_space(*, params: dict, loss_params: dict | None = None, fixed: dict | None = None) -> Space:
    """The space a gin file binds (see the module docstring)."""
    merged = {**params, **(loss_params or {})}
    if not merged:
        raise SpaceError("the search space has no parameters")
    return Space(tuple(_param(b, spec) for b, spec in merged.items()), dict(fixed or {}))


# What space files bind: ``search_space.params = {...}`` (a wrapped copy; the function stays plain).
_CONFIGURABLE = gin.external_configurable(search_space, name="search_space")


def load_space(path: str | Path, root: Path) -> Space:
    """Parses the space file ``path`` (``include`` lines resolve from ``root``), leaving gin clear."""
    from core.gin_search import add_root

    if not Path(path).exists() and not (root / path).exists():
        raise SpaceError(f"search space file not found: {path}")
    add_root(root)
    gin.clear_config()
    try:
        gin.parse_config_files_and_bindings([str(path)], [], skip_unknown=False)
        return _CONFIGURABLE()
    except SpaceError as err:  # gin appends "In call to configurable ..." lines: keep the first
        raise SpaceError(str(err).strip().splitlines()[0]) from None
    except (ValueError, OSError, SyntaxError, KeyError, TypeError) as err:
        raise SpaceError(f"bad search space {path}: {' '.join(str(err).split())}") from None
    finally:
        gin.clear_config()


def invalid_reason(values: dict, *, n_items: int) -> str | None:
    """Why the setting ``values`` (binding -> value) cannot train on a catalog of ``n_items``
    items, or None."""
    dim, heads = values.get("SASRec.dim"), values.get("SASRec.n_heads")
    if dim is not None and heads is not None and dim % heads:
        return f"SASRec.dim {dim} is not divisible by SASRec.n_heads {heads}"
    negatives = values.get("sampled_ce.n_negatives")
    if negatives is not None and negatives >= n_items:
        return f"sampled_ce.n_negatives {negatives} >= the catalog's {n_items} items"
    if values.get("sampled_ce.logq") and values.get("sampled_ce.sampler", "uniform") == "uniform":
        return "sampled_ce.logq changes nothing for the uniform sampler (a duplicate of logq = False)"
    return None


def as_bindings(values: dict) -> list[str]:
    """gin binding lines for ``values``; strings quoted, as in a gin file."""
    return [f"{k} = {v!r}" for k, v in values.items()]
