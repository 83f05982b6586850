#!/usr/bin/env python3
"""drgn's floor: the least any drgn-based tool does with a dump.

    python bench/drgn_floor.py [--exit-without-teardown] VMCORE VMLINUX [MODULE_DEBUGINFO...]

Opens the dump, loads the same debug info dfforensics is given and reads the kernel
log. Prints the log's size (so that the read is not optimised away by nobody).
With --exit-without-teardown it ends as the dfforensics command does: output
flushed, then os._exit, skipping the interpreter's teardown.
"""
import os
import sys

# The least a drgn tool can do includes not loading drgn's plugins (every installed one,
# dfforensics' own commands too), as dfforensics does for its own programs.
os.environ.setdefault("DRGN_DISABLE_PLUGINS", "*")

FAST_EXIT = sys.argv[1:2] == ["--exit-without-teardown"]
if FAST_EXIT:
    del sys.argv[1]

import drgn  # noqa: E402
from drgn.helpers.linux.printk import get_dmesg  # noqa: E402

prog = drgn.Program()
prog.set_core_dump(sys.argv[1])
try:
    prog.load_debug_info(sys.argv[2:])
except drgn.MissingDebugInfoError:
    pass  # modules without debug info: dfforensics goes on the same way
print(len(get_dmesg(prog)))
if FAST_EXIT:
    sys.stdout.flush()
    os._exit(0)
