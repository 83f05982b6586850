#!/usr/bin/env python3
"""Issue 19's budget: the no-vmlinux open against drgn's DWARF floor.

    python bench/no_vmlinux.py [--reps N] VMCORE VMLINUX BTF
    python bench/no_vmlinux.py --child VMCORE BTF          (one no-vmlinux run, timed by the parent)

The floor is bench/drgn_floor.py (open the dump, load the debug vmlinux, read the log).
The contender opens the same dump with no vmlinux (kallsyms from the dump, types from BTF:
BTF is the path of a detached BTF of the same build, or "memory" for the kernel's own)
and reads the log with drgn's get_dmesg. Both run as child processes that end without
interpreter teardown; wall time is taken around the child, peak RSS is its ru_maxrss
(os.wait4). Runs alternate; medians are printed with the ratios. Target: <= 0.5x in both.
Inputs must be uncompressed (the timed part is reading, not decompressing). Not a test.
"""
import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _child(vmcore: str, btf: str) -> None:
    os.environ.setdefault("DRGN_DISABLE_PLUGINS", "*")
    from drgn.helpers.linux.printk import get_dmesg

    from dfforensics.dump.guestdebuginfo import open_dump_without_vmlinux

    prog, _ = open_dump_without_vmlinux(vmcore, None if btf == "memory" else btf)
    print(len(get_dmesg(prog)))
    sys.stdout.flush()
    os._exit(0)


def _run(argv: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB) of one child."""
    start = time.perf_counter()
    child = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    elapsed = time.perf_counter() - start
    if status:
        raise SystemExit(f"{argv} failed with status {status}")
    return elapsed, usage.ru_maxrss


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", action="store_true")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("paths", nargs="+")
    args = parser.parse_args()
    if args.child:
        _child(*args.paths)
        return
    vmcore, vmlinux, btf = args.paths
    contenders = {
        "drgn DWARF floor": [sys.executable, str(HERE / "drgn_floor.py"), "--exit-without-teardown",
                             vmcore, vmlinux],
        "no vmlinux (kallsyms + BTF)": [sys.executable, str(Path(__file__).resolve()), "--child",
                                        vmcore, btf],
    }
    for argv in contenders.values():  # warm-up: page cache, .pyc
        _run(argv)
    samples: dict[str, list[tuple[float, int]]] = {name: [] for name in contenders}
    names = list(contenders)
    for rep in range(args.reps):
        for name in names[rep % 2:] + names[:rep % 2]:
            samples[name].append(_run(contenders[name]))
    medians = {name: (statistics.median(s[0] for s in runs), statistics.median(s[1] for s in runs))
               for name, runs in samples.items()}
    floor_time, floor_rss = medians[names[0]]
    print(f"{'contender':32} {'wall s':>8} {'peak MiB':>9} {'x time':>7} {'x RSS':>6}")
    for name, (wall, rss) in medians.items():
        print(f"{name:32} {wall:8.3f} {rss / 1024:9.1f} {wall / floor_time:7.2f} {rss / floor_rss:6.2f}")


if __name__ == "__main__":
    main()
