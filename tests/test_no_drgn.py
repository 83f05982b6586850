"""The pure packages and triage's parent process import no drgn: the parent plans
while its workers import drgn, and the pure layers must stay usable without it."""

import pkgutil
import subprocess
import sys

import pytest

import dfforensics.core
import dfforensics.inputs
import dfforensics.logs


def _modules(package) -> list[str]:
    return [package.__name__ + "." + info.name for info in pkgutil.iter_modules(package.__path__)]


PURE = _modules(dfforensics.core) + _modules(dfforensics.inputs) + _modules(dfforensics.logs)
TRIAGE_PARENT = ["dfforensics.batch.triage", "dfforensics.batch.discover",
                 "dfforensics.batch.debuginfo", "dfforensics.batch.jobs", "dfforensics.cli"]


def test_the_pure_packages_are_found():
    # A broken walk would make the test below pass on nothing.
    assert {"dfforensics.core.verdict", "dfforensics.inputs.formats",
            "dfforensics.logs.consolelog"} <= set(PURE)


@pytest.mark.parametrize("module", PURE + TRIAGE_PARENT)
def test_imports_no_drgn(module):
    # A fresh interpreter each: a module imported by an earlier one would hide this one's imports.
    code = (f"import sys, {module}; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('drgn', '_drgn')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", f"{module} imports {result.stdout.strip()}"


def test_the_check_sees_drgn_where_it_is_imported():
    code = "import sys, dfforensics.dump.opendump; print('drgn' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "True", result.stderr
