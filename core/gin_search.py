"""The one place the commands tell gin where config files live.

gin resolves ``include 'gin/base/train.gin'`` against the working directory first, then against
its search paths; on the way its package-resource reader logs ``ERROR:root:Path not found`` for
every include it cannot find as a Python resource, even when the search path then finds the
file. Run from outside the repository root those lines are noise that reads like a failure, so
``add_root`` also drops exactly those records (nothing else gin logs).
"""

from __future__ import annotations

import logging
from pathlib import Path

import gin


class _ResourceMisses(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        from_gin = record.pathname.replace("\\", "/").endswith("gin/resource_reader.py")
        return not (from_gin and str(record.msg).startswith("Path not found"))


_FILTER = _ResourceMisses()


def add_root(root: str | Path) -> None:
    """Makes ``include`` lines resolve from ``root`` (the repository root) wherever the command runs."""
    gin.add_config_file_search_path(str(root))
    logging.getLogger().addFilter(_FILTER)  # gin logs on the root logger; adding twice is a no-op
