#!/usr/bin/env python3
"""Makes the growth dumps: a fixtures scenario (default cpl0-irq-df) in bigger guests.

    python bench/gendumps.py [--scenario cpl0-irq-df] [--mem 1G --mem 4G] [--out DIR]

Runs the scenario with fixtures/build/builder.py's run_once (same kernel, same victim,
same emulated hypervisor bug, same kernel command line, init_on_free=1 as in the
committed fixtures) with QEMU -m MEM, and writes DIR/<scenario>-<MEM>/{vmcore,
console.log,expected.json} (DIR defaults to $DFFORENSICS_BENCH_CACHE or
~/.cache/dfforensics-bench).  Nothing is written under fixtures/ except the builder's
read-only inputs: the initramfs and the victims are built into DIR/work (other builders
rebuild fixtures/build/work/initramfs-* while they run), the kernel tree is only read
(never rebuilt), and the gdbstub ports are 16000+ (the fixtures use 12345+ and 15001+).
These dumps are never committed.
"""
import argparse
import json
import os
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "fixtures", "build"))
import builder  # noqa: E402

REAL_WORK = builder.WORK
CACHE = os.environ.get("DFFORENSICS_BENCH_CACHE", os.path.expanduser("~/.cache/dfforensics-bench"))


def use_private_work(ver, out):
    """Points builder.WORK at out/work: the initramfs and victims are built there; the
    kernel tree and the module are the fixtures builder's (a symlink and a copy, only read)."""
    real = REAL_WORK
    work = os.path.join(out, "work")
    os.makedirs(os.path.join(work, f"mod-{ver}"), exist_ok=True)
    shutil.copy(os.path.join(real, f"mod-{ver}", "dftest.ko"), os.path.join(work, f"mod-{ver}"))
    link = os.path.join(work, f"linux-source-{ver}")
    if not os.path.islink(link):
        os.symlink(os.path.join(real, f"linux-source-{ver}"), link)
    builder.WORK = work


def dump_dir(out, scenario, mem):
    return os.path.join(out, f"{scenario}-{mem}")


def generate(scenario, mem, out, port, attempts=4):
    sc = builder.SCENARIOS[scenario]
    if not os.path.exists(os.path.join(builder.ktree(sc["kernel"]), "vmlinux")):
        raise SystemExit(f"no built {sc['kernel']} kernel tree; the fixtures builder makes it (not this script)")
    use_private_work(sc["kernel"], out)
    img = builder.build_initramfs(sc["kernel"])
    dst = dump_dir(out, scenario, mem)
    for n in range(attempts):
        rdir = os.path.join(out, "run", f"{scenario}-{mem}")
        truth, status = builder.run_once(scenario, rdir, img, mem=mem, port=port)
        fin = truth["final"]
        if sc["mode"] != "cpl0" or fin["regs"]["cs"] == "0x33":
            break
        print(f"{scenario} -m {mem}: attempt {n} ended with a kernel-mode #DF; retrying", flush=True)
    else:
        raise SystemExit(f"{scenario} -m {mem}: no clean run in {attempts} attempts")
    os.makedirs(dst, exist_ok=True)
    os.replace(os.path.join(rdir, "vmcore"), os.path.join(dst, "vmcore"))
    shutil.copy(os.path.join(rdir, "console.log"), os.path.join(dst, "console.log"))
    ver = sc["kernel"]
    expected = {"scenario": scenario, "guest_memory": mem, "format": "elf",
                "verdict": sc["verdict"], "df_class": sc["df_class"],
                "cpu": fin["cpu"], "pid": fin.get("pid"), "tid": fin.get("tid"), "comm": fin.get("comm"),
                "regs": fin["regs"], "frames": list({f["address"]: f for f in truth.get("frames", [])}.values()),
                "vmlinux": os.path.join(builder.FIX, "kernels", f"linux-{ver}", "vmlinux.xz"),
                "run_state": status.get("status"),
                "append": " ".join(filter(None, [builder.BASE_APPEND, sc.get("append"), "dfrun=" + sc["run"]]))}
    with open(os.path.join(dst, "expected.json"), "w") as f:
        json.dump(expected, f, indent=2)
        f.write("\n")
    shutil.rmtree(rdir, ignore_errors=True)
    print(f"wrote {dst}", flush=True)
    return dst


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", default="cpl0-irq-df")
    ap.add_argument("--mem", action="append", help="QEMU -m value (repeatable; default 1G and 4G)")
    ap.add_argument("--out", default=CACHE)
    ap.add_argument("--force", action="store_true", help="regenerate dumps that exist")
    a = ap.parse_args()
    for i, mem in enumerate(a.mem or ["1G", "4G"]):
        if os.path.exists(os.path.join(dump_dir(a.out, a.scenario, mem), "expected.json")) and not a.force:
            print(f"{dump_dir(a.out, a.scenario, mem)}: exists", flush=True)
            continue
        generate(a.scenario, mem, a.out, port=16000 + i)


if __name__ == "__main__":
    main()
