"""
dfforensics: double-fault forensics for Linux x86_64 guest crash dumps.

``from dfforensics import analyze, render, scan_frames`` gives the Python API
(it needs drgn); the pure packages (``dfforensics.core``, ``dfforensics.logs``,
``dfforensics.inputs``) import nothing from drgn.
"""

from typing import Any

__all__ = ("analyze", "render", "scan_frames")
from dfforensics.core.version import __version__


def __getattr__(name: str) -> Any:
    # Loaded lazily so that the pure modules work without drgn.
    if name in __all__:
        from dfforensics import api

        return getattr(api, name)
    raise AttributeError(name)
