#!/usr/bin/env python3
"""dfforensics benchmarks (issue 7): one command, every contender in the same run.

    python bench/run.py [--quick] [--reps N] [--sections fixtures,growth,triage]

1. per fixture: `dfforensics VMCORE VMLINUX` end to end vs drgn's floor
   (bench/drgn_floor.py: open, load the same debug info, read the log) vs the crash
   utility doing the seed report's manual path (log, bt -a, rd -s around the saved RSP);
2. growth: the cpl0-irq-df scenario in 128 MiB, 1 GiB and 4 GiB guests (the 1 GiB and
   4 GiB dumps are made by bench/gendumps.py into the cache when missing: minutes);
3. triage throughput at --jobs 1 and --jobs 2 over an archive of distinct dumps.

Every contender reads the same uncompressed files: the fixtures' .xz are decompressed
once by dfforensics' own cache (inputs.formats.decompressed) before anything is timed, and
one untimed warm-up run of each contender per input puts them in the page cache.
Runs alternate between contenders (the order rotates every repetition); tables give
medians over the repetitions and ratios of medians.  Wall time is measured around the
child, peak RSS is the child's ru_maxrss from os.wait4.  Nothing here is a test.
"""
import argparse
import glob
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from tabulate import tabulate

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

from dfforensics.inputs.elffacts import read_elf_vmcoreinfo  # noqa: E402
from dfforensics.inputs.formats import decompressed  # noqa: E402

CACHE = os.environ.get("DFFORENSICS_BENCH_CACHE", os.path.expanduser("~/.cache/dfforensics-bench"))
DFF = os.path.join(os.path.dirname(sys.executable), "dfforensics")
if not os.path.exists(DFF):
    DFF = shutil.which("dfforensics")
FLOOR = [sys.executable, os.path.join(HERE, "drgn_floor.py")]
# Contenders run as on a user's machine: Python caches bytecode (an environment with
# PYTHONDONTWRITEBYTECODE would recompile dfforensics' modules on every run, ~28 ms that
# an installed package never pays; the warm-up run fills the cache).
CHILD_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
CRASH = shutil.which("crash")
NO_TEARDOWN = "drgn floor, no teardown"

TARGETS = {"floor_time": 1.3, "floor_rss": 1.2, "crash_speedup": 3.0, "growth": 1.5, "triage_scaling": 1.8}


# ---------------------------------------------------------------- running one child
def measure(cmd, stdin_path=None, out_path=None, env=None):
    """Run cmd; return (wall seconds, peak RSS in MiB, exit code, output)."""
    stdin = open(stdin_path, "rb") if stdin_path else subprocess.DEVNULL
    out = open(out_path, "w+b") if out_path else tempfile.TemporaryFile()
    try:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdin=stdin, stdout=out, stderr=subprocess.STDOUT, env=env or CHILD_ENV)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        CHILD_CPU[0] += usage.ru_utime + usage.ru_stime
        out.seek(0)
        text = out.read().decode(errors="replace")
    finally:
        if stdin_path:
            stdin.close()
        out.close()
    return wall, usage.ru_maxrss / 1024, proc.returncode, text


FAILURES = {}  # (dump, contender) -> why it could not run
CHILD_CPU = [0.0]  # CPU seconds of every child measured so far


def busy_seconds():
    """CPU seconds the whole machine spent busy since boot (/proc/stat)."""
    f = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    return (f[0] + f[1] + f[2] + f[5] + f[6] + (f[7] if len(f) > 7 else 0)) / os.sysconf("SC_CLK_TCK")


class OtherCpu:
    """How many cores other processes (not the contenders) kept busy during a section."""

    def __enter__(self):
        self.t, self.busy, self.ours = time.monotonic(), busy_seconds(), CHILD_CPU[0]
        return self

    def __exit__(self, *exc):
        elapsed = time.monotonic() - self.t
        others = busy_seconds() - self.busy - (CHILD_CPU[0] - self.ours)
        self.cores = max(0.0, others / elapsed) if elapsed else 0.0


def other_load():
    """Load average and the other QEMU guests running on the machine (shared with other jobs)."""
    qemus = 0
    for comm in glob.glob("/proc/[0-9]*/comm"):
        try:
            if open(comm).read().startswith("qemu-system"):
                qemus += 1
        except OSError:
            pass
    return {"loadavg1": float(open("/proc/loadavg").read().split()[0]), "qemu_guests": qemus}


# ---------------------------------------------------------------- inputs
class Dump:
    def __init__(self, name, vmcore, vmlinux, modules, expected):
        self.name, self.vmcore, self.vmlinux, self.modules, self.expected = name, vmcore, vmlinux, modules, expected

    def rsp(self):
        regs = self.expected.get("regs") or {}
        return int(regs["rsp"], 16) if regs.get("rsp") else None


def fixture_file(directory):
    """The dump of a fixture directory: vmcore.xz, vmcore.kdump, vmcore.flat.xz, ..."""
    found = sorted(f for f in os.listdir(directory) if f.startswith("vmcore") and not f.endswith(".txt"))
    return os.path.join(directory, found[0]) if found else None


def committed_fixtures():
    """Fixture scenarios whose dump is committed (others may be in the making)."""
    try:
        listed = subprocess.run(["git", "-C", ROOT, "ls-files", "fixtures/*/vmcore*"],
                                capture_output=True, text=True, check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        listed = glob.glob(os.path.join(ROOT, "fixtures/*/vmcore*"))
    return sorted({os.path.basename(os.path.dirname(p)) for p in listed if not p.endswith(".txt")})


def fixture_dump(name):
    d = os.path.join(ROOT, "fixtures", name)
    exp = json.load(open(os.path.join(d, "expected.json")))
    return Dump(name, decompressed(fixture_file(d), "VMCORE"),
                decompressed(os.path.normpath(os.path.join(d, exp["vmlinux"])), "VMLINUX"),
                [decompressed(os.path.normpath(os.path.join(d, m)), "module debug info")
                 for m in exp.get("module_debuginfo") or []], exp)


def growth_dump(mem):
    import gendumps
    d = gendumps.dump_dir(CACHE, "cpl0-irq-df", mem)
    if not os.path.exists(os.path.join(d, "expected.json")):
        print(f"growth: making the cpl0-irq-df dump of a {mem} guest (bench/gendumps.py, minutes)", flush=True)
        gendumps.generate("cpl0-irq-df", mem, CACHE, port=16000 + ["1G", "4G"].index(mem) if mem in ("1G", "4G") else 16010)
    exp = json.load(open(os.path.join(d, "expected.json")))
    return Dump(f"cpl0-irq-df {mem}", os.path.join(d, "vmcore"), decompressed(exp["vmlinux"], "VMLINUX"), [], exp)


# ---------------------------------------------------------------- contenders
def crash_commands(dump, path):
    """The seed report's manual path: the log, every CPU's backtrace, the stack around the saved RSP."""
    lines = ["log", "bt -a"]
    rsp = dump.rsp()
    if rsp is not None:
        lines += [f"rd -s {rsp - 0x100:x} 100", f"rd -s {rsp:x} 100"]
    lines.append("quit")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def contenders(dump, with_crash=True):
    mods = [a for m in dump.modules for a in ("--module-debuginfo", m)]
    c = {"dfforensics": dict(cmd=[DFF, dump.vmcore, dump.vmlinux, *mods], check=check_dff),
         "drgn floor": dict(cmd=FLOOR + [dump.vmcore, dump.vmlinux, *dump.modules], check=check_floor),
         # The same floor ending as dfforensics does (no interpreter teardown), so that
         # the ratio also shows what the analysis adds without that saving.
         NO_TEARDOWN: dict(cmd=FLOOR + ["--exit-without-teardown", dump.vmcore, dump.vmlinux, *dump.modules],
                           check=check_floor)}
    if with_crash and CRASH:
        os.makedirs(CACHE, exist_ok=True)
        cmdfile = crash_commands(dump, os.path.join(CACHE, f"crash-{dump.name.replace(' ', '-')}.cmd"))
        c["crash"] = dict(cmd=[CRASH, "-s", dump.vmlinux, dump.vmcore], stdin=cmdfile, check=check_crash)
    return c


def check_dff(dump, code, text):
    if code != 0:
        return f"exit {code}: {text[-300:]}"
    first = text.splitlines()[0] if text else ""
    want = dump.expected.get("verdict")
    if want and not first.startswith(f"verdict: {want} "):
        return f"verdict line {first!r}, expected {want}"
    return None


def check_floor(dump, code, text):
    last = (text.strip().splitlines() or [""])[-1]  # drgn may warn first (flattened dumps)
    return None if code == 0 and last.isdigit() and int(last) > 0 else f"exit {code}: {text[-300:]}"


def check_crash(dump, code, text):
    # crash exits 0 after 'quit'; the backtrace section must be there.
    return None if code == 0 and "PID:" in text else f"exit {code}: {text[-300:]}"


def bench(dumps, reps, crash_on=(), label=""):
    """Alternate the contenders on every dump; return {dump: {contender: [(wall, rss)]}}.

    Each repetition goes over every dump, so that a burst of load on the machine (it is
    shared) spoils one sample of several dumps rather than every sample of one; the
    medians drop it. crash runs on the dumps named in crash_on only (seconds a run)."""
    results = {d.name: {} for d in dumps}
    plans = {d.name: contenders(d, d.name in crash_on) for d in dumps}
    for rep in range(-1, reps):  # rep -1: untimed warm-up (page cache, pyc)
        for d in dumps:
            names = list(plans[d.name])
            k = rep % len(names) if rep >= 0 else 0
            for name in names[k:] + names[:k]:
                c = plans[d.name][name]
                wall, rss, code, text = measure(c["cmd"], c.get("stdin"))
                problem = c["check"](d, code, text)
                if problem and name != "dfforensics":
                    # This contender cannot open the dump (crash on a too new kernel, drgn
                    # without VMCOREINFO): say so, do not time it.
                    lines = [l.strip() for l in problem.splitlines() if l.strip()]
                    first = next((l for l in lines if "invalid" in l or l.startswith(("crash:", "ValueError", "Exception",
                                                                                     "OSError"))),
                                 lines[0] if lines else problem)
                    FAILURES[(d.name, name)] = first[:200]
                    print(f"  {label}{d.name}: {name} cannot open it: {first[:200]}", flush=True)
                    del plans[d.name][name]
                    continue
                if problem:
                    raise SystemExit(f"{label}{d.name}: {name}: {problem}\ncommand: {' '.join(c['cmd'])}")
                if rep >= 0:
                    results[d.name].setdefault(name, []).append((wall, rss))
        if rep >= 0:
            print(f"  {label}repetition {rep + 1}/{reps} done", flush=True)
    return results


def med(samples, i):
    return statistics.median(s[i] for s in samples)


# ---------------------------------------------------------------- sections
def section_fixtures(names, reps, crash_on):
    dumps = [fixture_dump(n) for n in names]
    load0 = other_load()
    with OtherCpu() as other:
        res = bench(dumps, reps, crash_on=crash_on, label="fixtures: ")
    rows, out = [], []
    for d in dumps:
        r = res[d.name]
        t = {k: med(v, 0) for k, v in r.items()}
        m = {k: med(v, 1) for k, v in r.items()}
        t_d, m_d, t_f, m_f, t_c = t["dfforensics"], m["dfforensics"], t.get("drgn floor"), m.get("drgn floor"), t.get("crash")
        t_n = t.get(NO_TEARDOWN)
        out.append(dict(fixture=d.name, dff_s=t_d, dff_mib=m_d, floor_s=t_f, floor_mib=m_f, crash_s=t_c,
                        floor_no_teardown_s=t_n, time_vs_floor_no_teardown=t_d / t_n if t_n else None,
                        crash_mib=m.get("crash"), time_vs_floor=t_d / t_f if t_f else None,
                        rss_vs_floor=m_d / m_f if m_f else None, crash_vs_dff=(t_c / t_d) if t_c else None,
                        n=len(r["dfforensics"]), failures={k[1]: v for k, v in FAILURES.items() if k[0] == d.name},
                        samples=r))

        def cell(name, value, fmt):
            if value is not None:
                return fmt.format(value)
            return "fails" if (d.name, name) in FAILURES else "-"
        rows.append([d.name, f"{t_d:.3f}", cell("drgn floor", t_f, "{:.3f}"), cell(NO_TEARDOWN, t_n, "{:.3f}"),
                     cell("crash", t_c, "{:.2f}"), cell("drgn floor", t_f and t_d / t_f, "{:.2f}x"),
                     cell(NO_TEARDOWN, t_n and t_d / t_n, "{:.2f}x"), f"{m_d:.0f}", cell("drgn floor", m_f, "{:.0f}"),
                     cell("crash", m.get("crash"), "{:.0f}"), cell("drgn floor", m_f and m_d / m_f, "{:.2f}x"),
                     cell("crash", t_c and t_c / t_d, "{:.1f}x")])
    head = ["fixture", "dff s", "floor s", "floor* s", "crash s", "dff/floor time", "dff/floor* time", "dff MiB",
            "floor MiB", "crash MiB", "dff/floor RSS", "crash/dff time"]
    return dict(rows=out, load_before=load0, load_after=other_load(), other_cores=other.cores,
                reps=reps), (head, rows)


def section_growth(reps, with_crash):
    dumps = [fixture_dump("cpl0-irq-df")]
    dumps[0].name = "cpl0-irq-df 128M"
    dumps += [growth_dump("1G"), growth_dump("4G")]
    load0 = other_load()
    with OtherCpu() as other:
        res = bench(dumps, reps, crash_on={d.name for d in dumps} if with_crash else (), label="growth: ")
    base = res[dumps[0].name]
    rows, out = [], []
    for d in dumps:
        r = res[d.name]
        size = os.path.getsize(d.vmcore) / (1 << 20)
        row = dict(dump=d.name, vmcore_mib=size)
        cells = [d.name, f"{size:.0f}"]
        for name in ("dfforensics", "drgn floor", "crash"):
            if name not in r:
                cells += ["-", "-"]
                continue
            t, m = med(r[name], 0), med(r[name], 1)
            row[name] = dict(s=t, mib=m, time_vs_128M=t / med(base[name], 0), rss_vs_128M=m / med(base[name], 1))
            cells += [f"{t:.2f} ({t / med(base[name], 0):.2f}x)", f"{m:.0f} ({m / med(base[name], 1):.2f}x)"]
        out.append(row)
        rows.append(cells)
    head = ["guest", "vmcore MiB", "dff s (vs 128M)", "dff MiB (vs 128M)", "floor s", "floor MiB", "crash s", "crash MiB"]
    return dict(rows=out, load_before=load0, load_after=other_load(), other_cores=other.cores,
                reps=reps), (head, rows)


def build_archive(names, rounds):
    """rounds x the fixtures, every file of distinct content (triage skips identical ones).

    Round 0 hard-links the decompressed fixtures; round r > 0 is a sparse copy with a
    4 KiB trailer naming the copy appended after the ELF's last byte (nothing reads it;
    it changes the triage identity, size + first and last MiB).  The debug vmlinuxes
    are hard-linked into a --debuginfo-dir."""
    arch = os.path.join(CACHE, f"archive-{rounds}x")
    dbg = os.path.join(CACHE, "archive-debuginfo")
    shutil.rmtree(arch, ignore_errors=True)  # made anew: the fixtures may have changed
    shutil.rmtree(dbg, ignore_errors=True)
    os.makedirs(arch)
    os.makedirs(dbg)
    expected, releases = {}, {}
    for name in names:
        d = fixture_dump(name)
        if d.expected.get("format", "elf") != "elf" or read_elf_vmcoreinfo(d.vmcore) is None:
            continue  # ELF dumps with VMCOREINFO only: triage finds their vmlinux by build ID
        rel = d.expected["kernel_release"]
        link = os.path.join(dbg, f"vmlinux-{rel}")
        if not os.path.exists(link):
            os.link(d.vmlinux, link)
        for r in range(rounds):
            dst = os.path.join(arch, f"vmcore-{name}-{r}")
            expected[dst] = d.expected.get("verdict")
            releases[dst] = rel
            if os.path.exists(dst):
                continue
            if r == 0:
                os.link(d.vmcore, dst)
            else:
                subprocess.run(["cp", "--sparse=always", d.vmcore, dst + ".tmp"], check=True)
                with open(dst + ".tmp", "ab") as f:
                    f.write(f"dfforensics-bench copy {r} of {name}\n".encode().ljust(4096, b"\0"))
                os.replace(dst + ".tmp", dst)
    return arch, dbg, expected, releases


def run_pool(cmds, n):
    """Run the commands n at a time; return the wall time (the control for --jobs scaling)."""
    start, running, todo = time.perf_counter(), {}, list(cmds)
    while todo or running:
        while todo and len(running) < n:
            p = subprocess.Popen(todo.pop(0), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=CHILD_ENV)
            running[p.pid] = p
        pid, status, usage = os.wait4(-1, 0)
        if pid in running:
            running.pop(pid).returncode = os.waitstatus_to_exitcode(status)
            CHILD_CPU[0] += usage.ru_utime + usage.ru_stime
    return time.perf_counter() - start


# Triage configurations, alternated. "--jobs 1" and "--jobs 2" are the target's; the third
# lets --jobs 1's drgn index DWARF on every core (triage gives each job one CPU), with
# OpenMP's idle threads sleeping instead of spinning, so that the ratio to the fastest
# single-job run is printed too.
ALL_CORES = "1 all-cores"
TRIAGE_CONFIGS = {
    1: ("--jobs 1", {}),
    2: ("--jobs 2", {}),
    ALL_CORES: ("--jobs 1, OMP_NUM_THREADS=cores, OMP_WAIT_POLICY=passive",
                {"OMP_NUM_THREADS": str(len(os.sched_getaffinity(0))), "OMP_WAIT_POLICY": "passive"}),
}


def section_triage(names, rounds, reps):
    arch, dbg, expected, releases = build_archive(names, rounds)
    n = len(expected)
    load0 = other_load()
    samples = {key: [] for key in TRIAGE_CONFIGS}
    control = {1: [], 2: []}
    # The control: the drgn floor on the same dumps, 1 or 2 processes at a time. Its
    # speed-up is what this machine gives two independent processes at that moment.
    vml = {os.path.basename(p): p for p in glob.glob(os.path.join(dbg, "vmlinux-*"))}
    floor_cmds = [FLOOR + [p, vml[f"vmlinux-{rel}"]] for p, rel in releases.items()]
    outdir = tempfile.mkdtemp(prefix="triage-", dir=CACHE)
    keys = list(TRIAGE_CONFIGS)
    for rep in range(-1, reps):
        for n_par in ((1, 2) if rep % 2 else (2, 1)):
            with OtherCpu() as other:
                wall = run_pool(floor_cmds, n_par)
            if rep >= 0:
                control[n_par].append((wall, other.cores))
        for key in keys[rep % len(keys):] + keys[:rep % len(keys)]:
            jobs = 1 if key == ALL_CORES else key
            out = os.path.join(outdir, f"rows-{jobs}.jsonl")
            if os.path.exists(out):
                os.unlink(out)
            env = {k: v for k, v in CHILD_ENV.items() if not k.startswith("OMP_")}
            env.update(TRIAGE_CONFIGS[key][1])
            with OtherCpu() as other:
                wall, rss, code, text = measure([DFF, "triage", arch, "--jobs", str(jobs), "--debuginfo-dir", dbg,
                                                 "--format", "jsonl", "-o", out], env=env)
            rows = [json.loads(line) for line in open(out) if line.strip()] if os.path.exists(out) else []
            bad = [r for r in rows if r.get("status") != "ok" or r.get("verdict") != expected.get(r["path"])]
            if code != 0 or len(rows) != n or bad:
                raise SystemExit(f"triage {TRIAGE_CONFIGS[key][0]}: exit {code}, {len(rows)}/{n} rows, "
                                 f"unexpected: {bad[:2]}\n{text[-500:]}")
            if rep >= 0:
                samples[key].append((wall, rss, statistics.median(r["seconds"] for r in rows), other.cores))
        if rep >= 0:
            print(f"  triage: repetition {rep + 1}/{reps} done", flush=True)
    shutil.rmtree(outdir, ignore_errors=True)
    t1, t2, t1all = med(samples[1], 0), med(samples[2], 0), med(samples[ALL_CORES], 0)
    rows = [[TRIAGE_CONFIGS[key][0], n, f"{med(samples[key], 0):.1f}", f"{60 * n / med(samples[key], 0):.1f}",
             f"{med(samples[key], 2):.2f}", f"{t1 / med(samples[key], 0):.2f}x",
             f"{t1all / med(samples[key], 0):.2f}x", f"{med(samples[key], 3):.2f}"]
            for key in keys]
    c1 = med(control[1], 0)
    rows += [[f"control: drgn floor, {j} at a time", n, f"{med(control[j], 0):.1f}",
              f"{60 * n / med(control[j], 0):.1f}", "-", f"{c1 / med(control[j], 0):.2f}x", "-",
              f"{med(control[j], 1):.2f}"] for j in (1, 2)]
    head = ["triage", "dumps", "wall s", "dumps/min", "per-dump worker s", "speed-up vs --jobs 1",
            "vs --jobs 1 on all cores", "cores busy with other work"]
    out = dict(dumps=n, archive=arch, jobs1_s=t1, jobs2_s=t2, jobs1_all_cores_s=t1all, scaling=t1 / t2,
               scaling_vs_all_cores=t1all / t2,
               worker_s={str(k): med(samples[k], 2) for k in keys}, other_cores={str(k): med(samples[k], 3) for k in keys},
               samples={str(k): v for k, v in samples.items()}, control=control,
               control_scaling=c1 / med(control[2], 0), load_before=load0, load_after=other_load(), reps=reps)
    return out, (head, rows)


# ---------------------------------------------------------------- report
def machine():
    model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    mem = next((int(l.split()[1]) for l in open("/proc/meminfo") if l.startswith("MemTotal")), 0)
    import drgn
    crash_v = next((l for l in subprocess.run([CRASH, "--version"], capture_output=True, text=True).stdout.splitlines()
                    if l.strip()), "?") if CRASH else "-"
    return {"nproc": os.cpu_count(), "cpu": model, "ram_gib": round(mem / (1 << 20), 1),
            "python": platform.python_version(), "drgn": drgn.__version__, "crash": crash_v.strip(),
            "kernel": platform.release()}


def verdicts(results):
    v = []
    if "fixtures" in results:
        rows = results["fixtures"]["rows"]
        worst_t = max(r["time_vs_floor"] for r in rows if r["time_vs_floor"])
        worst_m = max(r["rss_vs_floor"] for r in rows if r["rss_vs_floor"])
        v.append(("time <= 1.3x drgn floor", f"worst {worst_t:.2f}x", worst_t <= TARGETS["floor_time"]))
        nt = [r["time_vs_floor_no_teardown"] for r in rows if r["time_vs_floor_no_teardown"]]
        if nt:
            v.append(("time <= 1.3x drgn floor without teardown (floor*)", f"worst {max(nt):.2f}x",
                      max(nt) <= TARGETS["floor_time"]))
        v.append(("peak RSS <= 1.2x drgn floor", f"worst {worst_m:.2f}x", worst_m <= TARGETS["floor_rss"]))
        cr = [r["crash_vs_dff"] for r in rows if r["crash_vs_dff"]]
        if cr:
            v.append((">= 3x faster than crash", f"worst {min(cr):.1f}x", min(cr) >= TARGETS["crash_speedup"]))
    if "growth" in results:
        last = results["growth"]["rows"][-1]["dfforensics"]
        v.append(("128 MiB -> 4 GiB cost < 1.5x", f"time {last['time_vs_128M']:.2f}x, RSS {last['rss_vs_128M']:.2f}x",
                  last["time_vs_128M"] < TARGETS["growth"] and last["rss_vs_128M"] < TARGETS["growth"]))
    if "triage" in results:
        s = results["triage"]["scaling"]
        v.append(("triage --jobs 2 >= 1.8x --jobs 1", f"{s:.2f}x (control: {results['triage']['control_scaling']:.2f}x; "
                  f"vs --jobs 1 on all cores: {results['triage']['scaling_vs_all_cores']:.2f}x)",
                  s >= TARGETS["triage_scaling"]))
    return v


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="3 repetitions, crash on one fixture, growth without crash, a 20-dump archive")
    ap.add_argument("--reps", type=int, help="repetitions (default 5, --quick 3)")
    ap.add_argument("--sections", default="fixtures,growth,triage")
    ap.add_argument("--fixtures", help="comma-separated fixture names (default: every committed one)")
    # 50 dumps by default: a run's start-up (the parent and each fork server importing,
    # ~0.25 s) is paid once, and over 20 dumps it is a tenth of a --jobs 2 run.
    ap.add_argument("--rounds", type=int, help="triage archive: copies of each fixture (default 5, --quick 2)")
    a = ap.parse_args()
    reps = a.reps or (3 if a.quick else 5)
    names = a.fixtures.split(",") if a.fixtures else committed_fixtures()
    sections = a.sections.split(",")
    print(f"dfforensics: {DFF}\ndrgn floor: {' '.join(FLOOR)}\ncrash: {CRASH}\ncache: {CACHE}", flush=True)
    installed = subprocess.run([sys.executable, "-c", "import dfforensics; print(dfforensics.__file__)"],
                               capture_output=True, text=True, cwd="/", env=CHILD_ENV).stdout.strip()
    print(f"the dfforensics contender imports {installed}", flush=True)
    if installed.startswith(ROOT + os.sep):
        print("warning: an editable install (its import finder and the checkout's sources cost "
              "time a user's install does not); see bench/README.md for the venv to use", flush=True)
    results, tables = {"machine": machine(), "reps": reps, "quick": a.quick,
                       "started": time.strftime("%Y-%m-%d %H:%M:%S")}, []
    if "fixtures" in sections:
        crash_on = names[:1] if a.quick else names
        results["fixtures"], t = section_fixtures(names, reps, crash_on)
        tables.append(("Per dump: medians of %d runs each, alternating" % reps, t))
    if "growth" in sections:
        results["growth"], t = section_growth(reps, with_crash=not a.quick)
        tables.append(("Growth, cpl0-irq-df (medians of %d runs; ratio to the 128 MiB guest)" % reps, t))
    if "triage" in sections:
        results["triage"], t = section_triage(names, a.rounds or (2 if a.quick else 5), reps)
        tables.append(("Triage throughput (medians of %d runs, configurations alternating)" % reps, t))
    results["targets"] = [dict(target=t, measured=m, met=ok) for t, m, ok in verdicts(results)]
    md = [f"Machine: {results['machine']}", ""]
    for title, (head, rows) in tables:
        print(f"\n{title}\n{tabulate(rows, head)}")
        md += [f"**{title}**", "", tabulate(rows, head, tablefmt="github"), ""]
    vt = [[t["target"], t["measured"], "met" if t["met"] else "MISSED"] for t in results["targets"]]
    print("\n" + tabulate(vt, ["target", "measured", ""]))
    md += ["**Targets**", "", tabulate(vt, ["target", "measured", ""], tablefmt="github"), ""]
    results["failures"] = {f"{k[0]} / {k[1]}": v for k, v in FAILURES.items()}
    for (dump, name), why in FAILURES.items():
        print(f"{name} on {dump}: {why}")
        md.append(f"{name} on {dump}: {why}")
    for key in ("fixtures", "growth", "triage"):
        if key in results:
            md.append(f"{key}: load before {results[key]['load_before']}, after {results[key]['load_after']}, "
                      f"cores kept busy by other processes: {results[key].get('other_cores')}")
    os.makedirs(CACHE, exist_ok=True)
    with open(os.path.join(CACHE, "last-results.json"), "w") as f:
        json.dump(results, f, indent=1)
    with open(os.path.join(CACHE, "last-results.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    print(f"\nwritten: {os.path.join(CACHE, 'last-results.md')} and last-results.json")


if __name__ == "__main__":
    main()
