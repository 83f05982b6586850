"""Suite-wide setup: every test, and every process a test starts, caches into a
temporary directory, never into the user's ~/.cache (tests/test_cache_isolation.py)."""

import os
import shutil
import tempfile

_CACHE_VARIABLES = ("DFFORENSICS_CACHE", "XDG_CACHE_HOME")


def pytest_configure(config):
    # Set before any test module runs: subprocesses inherit the environment.
    root = tempfile.mkdtemp(prefix="dfforensics-tests-")
    config._dfforensics_saved_env = {name: os.environ.get(name) for name in _CACHE_VARIABLES}
    config._dfforensics_cache_root = root
    os.environ["DFFORENSICS_CACHE"] = os.path.join(root, "dfforensics")
    os.environ["XDG_CACHE_HOME"] = os.path.join(root, "xdg")


def pytest_unconfigure(config):
    root = getattr(config, "_dfforensics_cache_root", None)
    if root is None:
        return
    for name, value in config._dfforensics_saved_env.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    shutil.rmtree(root, ignore_errors=True)
