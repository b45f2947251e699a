"""Broken copies of a source file loaded as modules: how the kernel and launcher mutant tests
(test_flash_ce, test_flash_ce_skip, test_split_lse) make the variants that must be caught."""

from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path
from types import ModuleType


def load_source(name: str, source: str, folder: str | Path | None = None) -> ModuleType:
    """``source`` written to ``folder/name.py`` (default: a new temporary folder) and imported
    as module ``name`` (not registered in sys.modules)."""
    path = Path(folder or tempfile.mkdtemp()) / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_mutant(path: str | Path, old: str, new: str, name: str,
                folder: str | Path | None = None) -> ModuleType | None:
    """The file at ``path`` with ``old`` replaced by ``new``, as module ``mutant_<name>``; None
    when ``old`` is not in it exactly once (a mutant that would silently test nothing)."""
    source = Path(path).read_text()
    if source.count(old) != 1:
        return None
    return load_source(f"mutant_{name}", source.replace(old, new), folder)


def each_mutant(path: str | Path, mutants: list, module: str, check) -> dict:
    """{name: ``check()`` with ``module`` (a dotted name) replaced by that broken copy of the file
    at ``path``} for each (name, old, new) of ``mutants``: the copy is registered in sys.modules
    and as its package's attribute, so a launcher importing ``module`` at call time gets it; a
    mutant whose text is not found exactly once gets a message instead (the test then fails)."""
    import importlib
    import sys

    package, _, attr = module.rpartition(".")
    out = {}
    for name, old, new in mutants:
        mod = load_mutant(path, old, new, name)
        if mod is None:
            out[name] = "source text not found exactly once"
            continue
        sys.modules[module] = mod
        setattr(importlib.import_module(package), attr, mod)
        out[name] = check()
    return out
