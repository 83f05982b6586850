#!/usr/bin/env python3
"""Issue 19's budget: the no-vmlinux verdict and open against drgn's DWARF floor.

    python bench/no_vmlinux.py [--reps N] [--no-verdict] VMCORE VMLINUX BTF
    python bench/no_vmlinux.py --child VMCORE BTF          (one no-vmlinux run, timed by the parent)

The floor is bench/drgn_floor.py (open the dump, load the debug vmlinux, read the log).
The contender opens the same dump with no vmlinux (kallsyms from the dump, types from BTF:
BTF is the path of a detached BTF of the same build, or "memory" for the kernel's own)
and reads the log with drgn's get_dmesg, twice over: with an empty dfforensics cache
(the first dump of a kernel build) and with the cache the first run left (a second dump
of the same build: its BTF index is read, not rebuilt). Unless --no-verdict, the whole
`dfforensics VMCORE -q` (the verdict without the vmlinux, second run: what issue 19's
target measures) and `dfforensics VMCORE VMLINUX -q` (the verdict with it, context) are
timed too, and the no-vmlinux verdict with an empty cache as well (the first dump of a
kernel build: nothing kept from an earlier one). CPU seconds are printed beside wall time:
the floor indexes DWARF on every core.
Every contender is a child process that ends without interpreter teardown; wall time is
taken around the child, peak RSS is its ru_maxrss (os.wait4). Runs alternate (the order
rotates each repetition); medians are printed with the ratios to the floor. Target:
<= 0.5x in both. Inputs must be uncompressed (the timed part is reading, not
decompressing). Each cache is a temporary directory (DFFORENSICS_CACHE), never the
user's. Not a test.
"""
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def _child(vmcore: str, btf: str) -> None:
    os.environ.setdefault("DRGN_DISABLE_PLUGINS", "*")
    from drgn.helpers.linux.printk import get_dmesg

    from dfforensics.dump.guestdebuginfo import open_dump_without_vmlinux

    prog, _ = open_dump_without_vmlinux(vmcore, None if btf == "memory" else btf)
    print(len(get_dmesg(prog)))
    sys.stdout.flush()
    os._exit(0)


def _run(argv: list[str], cache: str | None = None) -> tuple[float, int, float, float]:
    """Wall seconds and peak RSS (KiB) of one child; ``cache``: its DFFORENSICS_CACHE, or
    None for an empty one made for this run alone."""
    import shutil
    import tempfile

    fresh = tempfile.mkdtemp(prefix="nvbench-cold-") if cache is None else None
    env = dict(os.environ, DFFORENSICS_CACHE=cache or fresh)
    try:
        return _timed(argv, env)
    finally:
        if fresh:
            shutil.rmtree(fresh)


def _busy_seconds() -> float:
    """CPU seconds the whole machine spent busy since boot (/proc/stat), as bench/run.py."""
    f = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    return (f[0] + f[1] + f[2] + f[5] + f[6] + (f[7] if len(f) > 7 else 0)) / os.sysconf("SC_CLK_TCK")


def _timed(argv: list[str], env: dict[str, str]) -> tuple[float, int, float, float]:
    """Wall seconds, peak RSS (KiB), the child's CPU seconds, and the cores other processes
    kept busy meanwhile: drgn's floor indexes DWARF on every core, so it is the contender
    that load from other jobs slows most."""
    import subprocess

    busy = _busy_seconds()
    start = time.perf_counter()
    child = subprocess.Popen(argv, stdout=subprocess.DEVNULL, env=env)
    _, status, usage = os.wait4(child.pid, 0)
    elapsed = time.perf_counter() - start
    if status:
        raise SystemExit(f"{argv} failed with status {status}")
    cpu = usage.ru_utime + usage.ru_stime
    return elapsed, usage.ru_maxrss, cpu, max(0.0, (_busy_seconds() - busy - cpu) / elapsed)


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        # Before argparse, statistics and subprocess are imported (~25 ms): the floor's
        # script imports drgn alone, and so must the contender.
        _child(*sys.argv[2:])
    import argparse
    import shutil
    import statistics
    import tempfile

    parser = argparse.ArgumentParser()
    parser.add_argument("--child", action="store_true")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--no-verdict", action="store_true", help="time only the open + log read")
    parser.add_argument("paths", nargs="+")
    args = parser.parse_args()
    if args.child:
        _child(*args.paths)
        return
    vmcore, vmlinux, btf = args.paths
    child = [sys.executable, os.path.abspath(__file__), "--child", vmcore, btf]
    warm = tempfile.mkdtemp(prefix="nvbench-warm-")
    contenders = {  # name: (argv, cache: None for an empty one each run)
        "drgn DWARF floor": ([sys.executable, os.path.join(HERE, "drgn_floor.py"), "--exit-without-teardown",
                              vmcore, vmlinux], warm),
        "no vmlinux, first run": (child, None),
        "no vmlinux, second run": (child, warm),
    }
    if not args.no_verdict:
        script = os.path.join(os.path.dirname(sys.executable), "dfforensics")
        contenders["dfforensics VMCORE (verdict)"] = ([script, vmcore, "-q"], warm)
        contenders["verdict, first dump of build"] = ([script, vmcore, "-q"], None)
        contenders["dfforensics VMCORE VMLINUX"] = ([script, vmcore, vmlinux, "-q"], warm)
    try:
        for argv, cache in contenders.values():  # warm-up: page cache, .pyc, the warm cache
            _run(argv, cache)
        samples: dict[str, list[tuple[float, int, float, float]]] = {name: [] for name in contenders}
        names = list(contenders)
        for rep in range(args.reps):
            for name in names[rep % len(names):] + names[:rep % len(names)]:
                samples[name].append(_run(*contenders[name]))
    finally:
        shutil.rmtree(warm, ignore_errors=True)
    medians = {name: [statistics.median(s[i] for s in runs) for i in range(4)] for name, runs in samples.items()}
    floor_time, floor_rss = medians[names[0]][:2]
    print(f"{'contender':30} {'wall s':>7} {'peak MiB':>9} {'CPU s':>6} {'x time':>7} {'x RSS':>6} {'others':>7}")
    for name, (wall, rss, cpu, others) in medians.items():
        print(f"{name:30} {wall:7.3f} {rss / 1024:9.1f} {cpu:6.3f} {wall / floor_time:7.2f} "
              f"{rss / floor_rss:6.2f} {others:7.2f}")
    print("(others: median cores other processes kept busy during a run)")
    print("samples (wall s / cores busy with other work):")
    for name, runs in samples.items():
        print(f"  {name:30} " + " ".join(f"{wall:.3f}/{others:.1f}" for wall, _, _, others in runs))


if __name__ == "__main__":
    main()
