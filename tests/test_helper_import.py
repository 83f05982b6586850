"""Entry points import only the drgn helper modules they use, and the package stays whole
for code that asks for it. Each case runs in a fresh interpreter: the switch is per process."""

import json
import subprocess
import sys

import pytest

_SETUP = "from dfforensics.core.process import import_drgn_helpers_on_demand as on_demand\n"


def _run(code: str) -> dict:
    done = subprocess.run([sys.executable, "-c", _SETUP + code], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_a_helper_module_imports_without_the_whole_package():
    found = _run(
        "on_demand()\n"
        "import sys, json\n"
        "from drgn.helpers.linux.printk import get_dmesg\n"
        "print(json.dumps({'block': 'drgn.helpers.linux.block' in sys.modules,\n"
        "                  'printk': 'drgn.helpers.linux.printk' in sys.modules}))\n")
    assert found == {"block": False, "printk": True}


def test_without_the_switch_the_package_imports_every_helper():
    # The contrast that makes the test above mean something: drgn's __init__ imports all.
    found = _run(
        "import sys, json\n"
        "from drgn.helpers.linux.printk import get_dmesg\n"
        "print(json.dumps({'block': 'drgn.helpers.linux.block' in sys.modules}))\n")
    assert found == {"block": True}


@pytest.mark.parametrize("ask", [
    "import drgn.helpers.linux as package; value = package.for_each_task.__module__",
    "from drgn.helpers.linux import for_each_task; value = for_each_task.__module__",
    "ns = {}; exec('from drgn.helpers.linux import *', ns); value = ns['for_each_task'].__module__",
    "import drgn.helpers.linux as package; value = 'for_each_task' in dir(package) and 'drgn.helpers.linux.pid'",
])
def test_names_of_the_package_itself_still_work(ask):
    found = _run(
        "on_demand()\n"
        "import json\n"
        "from drgn.helpers.linux.printk import get_dmesg\n"
        f"{ask}\n"
        "print(json.dumps({'value': value}))\n")
    assert found == {"value": "drgn.helpers.linux.pid"}


def test_a_name_the_package_lacks_is_a_plain_attribute_error_after_the_init_ran():
    found = _run(
        "on_demand()\n"
        "import json, sys\n"
        "import drgn.helpers.linux as package\n"
        "errors = []\n"
        "for _ in range(2):\n"
        "    try:\n"
        "        package.no_such_helper\n"
        "    except AttributeError as error:\n"
        "        errors.append(type(error).__name__)\n"
        "print(json.dumps({'errors': errors, 'block': 'drgn.helpers.linux.block' in sys.modules,\n"
        "                  'hooks': '__getattr__' in vars(package)}))\n")
    assert found == {"errors": ["AttributeError", "AttributeError"], "block": True, "hooks": False}


def test_nothing_changes_once_the_package_is_imported():
    found = _run(
        "import drgn.helpers.linux, sys, json\n"
        "on_demand(); on_demand()\n"
        "print(json.dumps({'finders': sum(type(f).__name__ == '_HelperPackageOnDemand' for f in sys.meta_path),\n"
        "                  'all': len(drgn.helpers.linux.__dict__['__all__']) > 100}))\n")
    assert found == {"finders": 0, "all": True}


def test_the_analysis_imports_only_the_helpers_it_uses():
    code = (
        "import sys, json\n"
        "from dfforensics.core.process import import_drgn_helpers_on_demand\n"
        "import_drgn_helpers_on_demand()\n"
        "from dfforensics.dump import analysis, sweep, finddf, rspregion, stackscan, stackcoverage, context\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('drgn.helpers.linux.'))))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr
    imported = json.loads(done.stdout.splitlines()[-1])
    assert "drgn.helpers.linux.mm" in imported and "drgn.helpers.linux.pid" in imported
    assert "drgn.helpers.linux.block" not in imported and "drgn.helpers.linux.net" not in imported


def test_the_common_helpers_too_are_imported_on_demand():
    found = _run(
        "on_demand()\n"
        "import sys, json\n"
        "from dfforensics.dump import analysis\n"
        "before = sorted(m for m in sys.modules if m.startswith('drgn.helpers.common.'))\n"
        "import drgn.helpers.common as package\n"
        "value = package.identify_address.__module__\n"
        "print(json.dumps({'before': before, 'value': value,\n"
        "                  'finders': sum(type(f).__name__ == '_HelperPackageOnDemand' for f in sys.meta_path)}))\n")
    assert found == {"before": ["drgn.helpers.common.format", "drgn.helpers.common.prog"],
                     "value": "drgn.helpers.common.memory", "finders": 0}
