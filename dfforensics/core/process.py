"""
How dfforensics' own processes start and end
--------------------------------------------

The ``dfforensics`` command and each triage worker are processes of their
own: they choose the drgn plugins their programs load, import only the drgn
helper modules they use, and end without tearing the interpreter down. Library
use (the API, the drgn commands) does none of this.
"""

import importlib.machinery
import os
import sys
from types import ModuleType
from typing import Any, Final, NoReturn, Optional, Sequence

__all__ = ("exit_without_teardown", "import_drgn_helpers_on_demand", "skip_drgn_plugins")

# drgn 0.3.0's helper packages whose ``__init__`` imports every module of the package.
_HELPER_PACKAGES: Final = ("drgn.helpers.linux", "drgn.helpers.common")


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


# The import protocols are duck-typed: no importlib.abc base classes, whose module imports
# importlib.resources and with it tempfile, pathlib and shutil (~10 ms of every start).
class _HelperPackageLoader:
    """Makes the package module without running its ``__init__`` until a name of its own is asked."""

    def __init__(self, package_loader: Any) -> None:
        self._package_loader = package_loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> Optional[ModuleType]:
        return None

    def exec_module(self, module: ModuleType) -> None:
        def run_package_init() -> None:
            # PEP 562 hooks, consulted only for names the module lacks: removed first,
            # so the real __init__ runs once and later misses are plain AttributeErrors.
            del module.__dict__["__getattr__"], module.__dict__["__dir__"]
            self._package_loader.exec_module(module)

        def getattr_after_init(name: str) -> Any:
            run_package_init()
            return getattr(module, name)

        def dir_after_init() -> list[str]:
            run_package_init()
            return sorted(module.__dict__)

        module.__dict__["__getattr__"] = getattr_after_init
        module.__dict__["__dir__"] = dir_after_init


class _HelperPackageOnDemand:
    def __init__(self, packages: set[str]) -> None:
        self._packages = packages

    def find_spec(self, fullname: str, path: Optional[Sequence[str]],
                  target: Optional[ModuleType] = None) -> Optional[importlib.machinery.ModuleSpec]:
        if fullname not in self._packages:
            return None
        self._packages.discard(fullname)
        if not self._packages:
            sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None or not spec.submodule_search_locations:
            return spec
        spec.loader = _HelperPackageLoader(spec.loader)
        return spec


def import_drgn_helpers_on_demand() -> None:
    """Import only the ``drgn.helpers.linux`` and ``drgn.helpers.common`` modules this
    process uses.

    drgn's ``drgn.helpers.linux/__init__.py`` imports every helper module (50 of them
    in drgn 0.3.0, with the standard library they pull in: ~45 ms of a 0.1 s start) so
    that ``from drgn.helpers.linux import *`` works, and ``drgn.helpers.common``'s does
    the same with its five (dfforensics uses ``format`` and ``prog``; the other three ~1 ms);
    dfforensics imports the few it uses by their own names (``drgn.helpers.linux.printk``
    ...). With this, a package's ``__init__`` runs only when a name of the package itself
    is asked (``drgn.helpers.linux.for_each_task``, ``import *``, ``dir``), so code that
    wants the whole package still gets it. For entry points only: drgn's own CLI reads the
    package's ``__dict__["__all__"]`` directly, so a process that may run drgn's CLI or
    plugins must not call this. A package already imported is left as it is.
    """
    if any(isinstance(finder, _HelperPackageOnDemand) for finder in sys.meta_path):
        return
    pending = {package for package in _HELPER_PACKAGES if package not in sys.modules}
    if pending:
        sys.meta_path.insert(0, _HelperPackageOnDemand(pending))


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
