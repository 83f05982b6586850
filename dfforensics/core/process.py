"""
How dfforensics' own processes start and end
--------------------------------------------

The ``dfforensics`` command and each triage worker are processes of their
own: they choose the drgn plugins their programs load, and they end without
tearing the interpreter down. Library use (the API, the drgn commands) does
neither.
"""

import os
import sys
from typing import NoReturn

__all__ = ("exit_without_teardown", "skip_drgn_plugins")


def skip_drgn_plugins() -> None:
    """Let this process's drgn programs load no plugin, unless the user chose plugins.

    drgn loads every installed plugin (this package's own commands among them) on the
    first program a process creates: 0.05 s per dump in a worker, 0.15 s in a fresh
    process, about a fifth of the whole analysis. dfforensics builds its programs from the
    files it is given and needs no plugin. For entry points only: it sets the
    process's environment (``DRGN_DISABLE_PLUGINS=*``), which workers inherit;
    ``DRGN_PLUGINS`` or ``DRGN_DISABLE_PLUGINS`` set by the user win.
    """
    if "DRGN_PLUGINS" not in os.environ and "DRGN_DISABLE_PLUGINS" not in os.environ:
        os.environ["DRGN_DISABLE_PLUGINS"] = "*"


def exit_without_teardown(status: int) -> NoReturn:
    """Flush the output and end the process now, with ``status``.

    Tearing the interpreter down frees drgn's debug-info index and every
    module one by one: ~15 ms per run, a tenth of a whole analysis, for memory
    the kernel takes back at once. Everything the process writes goes through
    ``sys.stdout``/``sys.stderr`` or files it has closed, so flushing the two
    streams is all the teardown it needs. A reader gone away (``| head``) is
    not an error, as in :func:`dfforensics.cli.main`.
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (BrokenPipeError, ValueError):
            pass
    os._exit(status)
