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
