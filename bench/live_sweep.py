#!/usr/bin/env python3
"""Issue 21's cost: a live sweep of running guests with 10, 100 and 1,000 threads, what the
guest loses while it is swept, and the sweep of a dump of the 1,000-thread guest.

    python bench/live_sweep.py [--threads 10,100,1000] [--reps 5] [--window 4]

Each guest is the live test's (tests/liveguest.py: the committed 6.1 bzImage, lvinit with
lvthreads=N worker threads and the lv-left victim spinning, so the vCPU is always busy),
QEMU TCG, -m 256M, one vCPU. Measured:

- sweep: wall time of ``dfforensics sweep --qemu SOCKET VMLINUX -q`` as a child process
  (interpreter start, imports, connect, debug info, sweep, let go), median of --reps; and
  the time the QMP socket was held (the report's ``seconds_connected``: analysis only);
- guest lost: the vCPU thread's CPU time (``/proc/QEMU/task/TID/schedstat``, ns) per wall
  second while ``dfforensics sweep --qemu`` runs back to back for --window seconds, against
  the same guest left alone for --window seconds before and after (the guest always has
  work: a vCPU that runs less, ran less of the guest); 1 - swept/alone, median over --reps
  windows; and the same with OMP_NUM_THREADS=4 (drgn's DWARF index on every core, as
  before the command chose one thread);
- dump: wall time of ``dfforensics sweep VMCORE VMLINUX -q`` on the 1,000-thread guest's ELF
  dump (QMP dump-guest-memory), median of --reps.

Not a test (CI does not run it); the machine is shared, so medians.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
import liveguest  # noqa: E402

CLI = [sys.executable, "-m", "dfforensics.cli"]
# As the command does for itself (dfforensics/livecli.py), for the in-process sweeps here.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def vcpu_thread(pid: int) -> int:
    for task in os.listdir(f"/proc/{pid}/task"):
        if Path(f"/proc/{pid}/task/{task}/comm").read_text().strip().startswith("CPU 0"):
            return int(task)
    raise SystemExit("no vCPU thread in QEMU")


def vcpu_ns(pid: int, tid: int) -> int:
    return int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])


def rate(pid: int, tid: int, seconds: float, work=None) -> float:
    """vCPU CPU seconds per wall second over ``seconds``, running ``work`` meanwhile."""
    cpu0, wall0 = vcpu_ns(pid, tid), time.monotonic()
    while time.monotonic() - wall0 < seconds:
        if work is None:
            time.sleep(0.05)
        else:
            work()
    return (vcpu_ns(pid, tid) - cpu0) / 1e9 / (time.monotonic() - wall0)


def timed(command) -> float:
    start = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True)
    elapsed = time.monotonic() - start
    if result.returncode:
        raise SystemExit(f"{command}: {result.stderr}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", default="10,100,1000")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--window", type=float, default=4.0)
    args = parser.parse_args()
    from dfforensics.dump.live import sweep_qemu

    rows = []
    with tempfile.TemporaryDirectory(prefix="dff-live-bench-") as tmp:
        directory = Path(tmp)
        for count in [int(n) for n in args.threads.split(",")]:
            guest = liveguest.Guest(directory, f"t{count}", threads=count, memory="256M")
            try:
                guest.wait_console(r"lvinit: lv-threads pid \d+ started", timeout=600)
                time.sleep(2)  # the workers' first recursion and allocations done
                vmlinux = str(guest.vmlinux)
                command = CLI + ["sweep", "--qemu", str(guest.qmp), vmlinux, "-q"]
                timed(command)  # warm-up: page cache, .pyc
                walls = [timed(command) for _ in range(args.reps)]
                reports = [sweep_qemu(str(guest.qmp), vmlinux) for _ in range(args.reps)]
                held = [r.source["seconds_connected"] for r in reports]
                report = reports[-1]
                tid = vcpu_thread(guest.process.pid)
                losses, wide = [], []
                for _ in range(args.reps):
                    for into, env in ((losses, None), (wide, dict(os.environ, OMP_NUM_THREADS="4"))):
                        before = rate(guest.process.pid, tid, args.window)
                        swept = rate(guest.process.pid, tid, args.window,
                                     lambda: subprocess.run(command, env=env, capture_output=True))
                        after = rate(guest.process.pid, tid, args.window)
                        into.append(1 - swept / ((before + after) / 2))
                row = {"threads": count, "tasks": report.sweep.tasks_scanned,
                       "pages": report.sweep.pages_present, "verdict": report.sweep.verdict.value,
                       "cli_wall_s": statistics.median(walls), "connected_s": statistics.median(held),
                       "guest_lost": statistics.median(losses), "losses": losses,
                       "guest_lost_omp4": statistics.median(wide), "losses_omp4": wide, "walls": walls,
                       "held": held}
                if count == max(int(n) for n in args.threads.split(",")):
                    vmcore = directory / "dump.vmcore"
                    qmp = liveguest.Qmp(guest.qmp2, timeout=300)
                    qmp.cmd("dump-guest-memory", paging=False, protocol=f"file:{vmcore}", format="elf")
                    qmp.close()
                    dump_command = CLI + ["sweep", str(vmcore), vmlinux, "-q"]
                    timed(dump_command)
                    row["dump_walls"] = [timed(dump_command) for _ in range(args.reps)]
                    row["dump_wall_s"] = statistics.median(row["dump_walls"])
                    os.unlink(vmcore)
                rows.append(row)
                print(json.dumps(row), flush=True)
            finally:
                guest.close()
    print("\n| guest threads | tasks swept | pages read | verdict | `sweep --qemu` wall (s) | socket held (s) "
          "| guest lost while swept back to back | the same, OMP_NUM_THREADS=4 |")
    print("| ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: |")
    for row in rows:
        print(f"| {row['threads']} | {row['tasks']} | {row['pages']} | {row['verdict']} | {row['cli_wall_s']:.2f} "
              f"| {row['connected_s']:.3f} | {100 * row['guest_lost']:.1f} % | {100 * row['guest_lost_omp4']:.1f} % |")
    for row in rows:
        if "dump_wall_s" in row:
            print(f"\ndump of the {row['threads']}-thread guest: `dfforensics sweep VMCORE VMLINUX` "
                  f"{row['dump_wall_s']:.2f} s (median of {args.reps})")


if __name__ == "__main__":
    main()
