#!/usr/bin/env python3
"""drgn's floor: the least any drgn-based tool does with a dump.

    python bench/drgn_floor.py VMCORE VMLINUX [MODULE_DEBUGINFO...]

Opens the dump, loads the same debug info dfforensics is given and reads the kernel
log. Prints the log's size (so that the read is not optimised away by nobody).
"""
import sys

import drgn
from drgn.helpers.linux.printk import get_dmesg

prog = drgn.Program()
prog.set_core_dump(sys.argv[1])
try:
    prog.load_debug_info(sys.argv[2:])
except drgn.MissingDebugInfoError:
    pass  # modules without debug info: dfforensics goes on the same way
print(len(get_dmesg(prog)))
