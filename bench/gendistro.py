#!/usr/bin/env python3
"""Makes the distro-sized dump of the no-vmlinux bench: Debian's own 6.1 cloud kernel.

    python bench/gendistro.py [--out DIR] [--mem 512M] [--force]

The fixture kernels are tiny (a few MB of debug info); issue 19's target is about a distro
kernel, whose debug vmlinux drgn must index (Debian 12's cloud one: ~590 MB). This

1. downloads the two packages pinned below (``apt-get download`` of the exact version,
   or, when apt no longer offers it, the same file from snapshot.debian.org) and checks
   their SHA256 (the values of the Packages index they came from);
2. unpacks ``/boot/vmlinuz-*`` and the debug ``vmlinux-*`` from them (``dpkg-deb``);
3. builds an initramfs from the project's own live-guest one (fixtures/live/initramfs.cpio.xz:
   a static ``lvinit`` that starts a spinning victim and worker threads; it needs nothing
   from the kernel but syscalls) and Debian's ``qemu_fw_cfg.ko``, loaded first by a static
   ``/init`` (bench/distroinit.c): Debian builds that driver as a module, and without it the
   guest never hands QEMU its VMCOREINFO (udev loads it on a real Debian guest);
4. boots that kernel under QEMU TCG with ``-device vmcoreinfo``, KASLR on as Debian boots it;
5. once ``lvinit`` says its threads run, takes an ELF dump with QMP ``dump-guest-memory``
   (paging false) and quits the guest.

It writes DIR/debian-6.1-cloud/{vmcore, vmlinux-RELEASE (debug), vmlinuz-RELEASE,
initramfs.cpio, console.log, dump.json} (DIR: $DFFORENSICS_BENCH_CACHE or ~/.cache/dfforensics-bench).
Nothing is written under fixtures/ and none of it is ever committed.
"""
import argparse
import hashlib
import json
import lzma
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import liveguest  # noqa: E402  (the tests' QMP client)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CACHE = os.environ.get("DFFORENSICS_BENCH_CACHE", os.path.expanduser("~/.cache/dfforensics-bench"))
NAME = "debian-6.1-cloud"

# Debian 12's bookworm-security 6.1 cloud kernel as of 2026-12-02 (ABI 6.1.0-57, source
# linux 6.1.192-3). Pinned, with the SHA256 the archive's Packages index gives.
ABI = "6.1.0-57-cloud-amd64"
VERSION = "6.1.192-3"
PACKAGES = {
    f"linux-image-{ABI}": {
        "path": f"pool/updates/main/l/linux-signed-amd64/linux-image-{ABI}_{VERSION}_amd64.deb",
        "sha256": "4fdd0172a8c3f41a97e92465b2ac1867e1c10d82d7aeed3d26ee7a5d14df1754",
    },
    f"linux-image-{ABI}-dbg": {
        "path": f"pool/updates/main/l/linux/linux-image-{ABI}-dbg_{VERSION}_amd64.deb",
        "sha256": "07c7ca5e36079e60aa74e70a1100c52a099dbca8f803ed27b3bb1339c954cfb3",
    },
}
# Where a package is fetched when apt's lists no longer have that version: the security
# archive, then the snapshot service, which keeps every file ever published.
MIRRORS = ("https://deb.debian.org/debian-security/",
           "https://snapshot.debian.org/archive/debian-security/20261202T000000Z/")

INITRAMFS = os.path.join(ROOT, "fixtures", "live", "initramfs.cpio.xz")
LOADER = os.path.join(HERE, "distroinit.c")
FW_CFG = f"/lib/modules/{ABI}/kernel/drivers/firmware/qemu_fw_cfg.ko"
APPEND = "console=ttyS0 panic=-1 lvthreads=8"
READY = "lvinit: lv-threads pid"
FW_CFG_LOADED = "distroinit: qemu_fw_cfg loaded"
# Every archive entry gets this mtime, so the initramfs is the same bytes on every run.
MTIME = 1704067200


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(name, spec, into):
    """The package file, checked against its pinned SHA256."""
    target = os.path.join(into, os.path.basename(spec["path"]))
    if os.path.exists(target) and sha256(target) == spec["sha256"]:
        return target
    fetched = subprocess.run(["apt-get", "download", f"{name}={VERSION}"], cwd=into,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if fetched.returncode or not os.path.exists(target):
        print(f"apt-get download {name}={VERSION}: {fetched.stderr.strip()[-200:]}; trying the mirrors",
              flush=True)
        for mirror in MIRRORS:
            try:
                with urllib.request.urlopen(mirror + spec["path"], timeout=60) as response, \
                        open(target + ".part", "wb") as out:
                    shutil.copyfileobj(response, out, 1 << 20)
                os.replace(target + ".part", target)
                break
            except OSError as error:
                print(f"{mirror}{spec['path']}: {error}", flush=True)
    if not os.path.exists(target):
        raise SystemExit(f"{name} {VERSION}: not downloadable")
    if sha256(target) != spec["sha256"]:
        os.unlink(target)
        raise SystemExit(f"{target}: SHA256 differs from the pinned one; removed")
    return target


def extract(deb, member, to):
    """One file of a .deb's data, by its path in the package, written to ``to``."""
    with tempfile.TemporaryDirectory(dir=os.path.dirname(to)) as tmp:
        tar = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", deb], stdout=subprocess.PIPE)
        subprocess.run(["tar", "-x", "-C", tmp, "." + member], stdin=tar.stdout, check=True)
        if tar.wait():
            raise SystemExit(f"dpkg-deb --fsys-tarfile {deb} failed")
        os.replace(os.path.join(tmp, member.lstrip("/")), to)


def cpio_entries(data):
    """(name, mode, body) of each entry of a newc cpio archive."""
    at = 0
    while True:
        header = data[at:at + 110]
        if header[:6] != b"070701":
            raise SystemExit("the live initramfs is not a newc cpio")
        fields = [int(header[6 + 8 * i:14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        name_end = at + 110 + namesize
        name = data[at + 110:name_end - 1].decode()
        body_at = (name_end + 3) & ~3
        if name == "TRAILER!!!":
            return
        yield name, mode, data[body_at:body_at + size]
        at = (body_at + size + 3) & ~3


def cpio(entries):
    """A newc cpio archive of (name, mode, body, rdev major, rdev minor), owned by root."""
    out = bytearray()
    for ino, (name, mode, body, major, minor) in enumerate(entries + [("TRAILER!!!", 0, b"", 0, 0)], 1):
        encoded = name.encode() + b"\0"
        fields = (ino, mode, 0, 0, 1, MTIME, len(body), 0, 0, major, minor, len(encoded), 0)
        out += b"070701" + b"".join(b"%08x" % field for field in fields) + encoded
        out += b"\0" * (-len(out) % 4) + body
        out += b"\0" * (-len(out) % 4)
    return bytes(out)


def build_initramfs(image_deb, out):
    """lvinit from the live initramfs, Debian's qemu_fw_cfg.ko, and distroinit as /init."""
    lvinit = next(body for name, _, body in cpio_entries(lzma.decompress(open(INITRAMFS, "rb").read()))
                  if name == "init")
    module = os.path.join(out, "qemu_fw_cfg.ko")
    extract(image_deb, FW_CFG, module)
    loader = os.path.join(out, "distroinit")
    subprocess.run(["gcc", "-O1", "-static", "-s", "-o", loader, LOADER], check=True)
    entries = [("dev", 0o40755, b"", 0, 0), ("dev/console", 0o20600, b"", 5, 1),
               ("init", 0o100755, open(loader, "rb").read(), 0, 0), ("lvinit", 0o100755, lvinit, 0, 0),
               ("proc", 0o40755, b"", 0, 0), ("qemu_fw_cfg.ko", 0o100644, open(module, "rb").read(), 0, 0)]
    image = os.path.join(out, "initramfs.cpio")
    with open(image, "wb") as file:
        file.write(cpio(entries))
    os.unlink(module)
    os.unlink(loader)
    return image


def boot_and_dump(vmlinuz, initramfs, out, mem, timeout=600):
    run = tempfile.mkdtemp(prefix="gendistro-", dir=out)
    qmp_path, console = os.path.join(run, "qmp.sock"), os.path.join(run, "console.log")
    command = ["qemu-system-x86_64", "-machine", "pc", "-accel", "tcg", "-cpu", "qemu64", "-m", mem,
               "-smp", "1", "-display", "none", "-monitor", "none", "-serial", f"file:{console}",
               "-no-reboot", "-device", "vmcoreinfo", "-kernel", vmlinuz, "-initrd", initramfs,
               "-append", APPEND, "-qmp", f"unix:{qmp_path},server=on,wait=off"]
    qemu = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=open(os.path.join(run, "qemu.err"), "w"))
    try:
        deadline = time.monotonic() + timeout
        text = ""
        while READY not in text:
            if qemu.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the guest did not reach {READY!r}: {text[-2000:]}")
            time.sleep(1)
            text = open(console, errors="replace").read() if os.path.exists(console) else ""
        if FW_CFG_LOADED not in text:
            raise SystemExit(f"the guest did not load qemu_fw_cfg.ko: {text[-2000:]}")
        time.sleep(2)  # the workers run a while: their stacks hold something
        qmp = liveguest.Qmp(qmp_path, timeout=600)
        vmcore = os.path.join(out, "vmcore")
        qmp.cmd("stop")
        qmp.cmd("dump-guest-memory", paging=False, protocol=f"file:{vmcore}")
        qmp.cmd("quit")
        qemu.wait(60)
        shutil.copy(console, os.path.join(out, "console.log"))
        return vmcore, command
    finally:
        if qemu.poll() is None:
            qemu.kill()
        shutil.rmtree(run, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=CACHE)
    ap.add_argument("--mem", default="512M", help="QEMU -m (default 512M)")
    ap.add_argument("--force", action="store_true", help="make the dump again")
    a = ap.parse_args()
    out = os.path.join(a.out, NAME)
    meta_path = os.path.join(out, "dump.json")
    if os.path.exists(meta_path) and not a.force:
        print(f"{out}: exists", flush=True)
        return
    os.makedirs(out, exist_ok=True)
    debs = {name: download(name, spec, out) for name, spec in PACKAGES.items()}
    release = ABI
    vmlinuz, vmlinux = os.path.join(out, f"vmlinuz-{release}"), os.path.join(out, f"vmlinux-{release}")
    if not os.path.exists(vmlinuz):
        extract(debs[f"linux-image-{ABI}"], f"/boot/vmlinuz-{release}", vmlinuz)
    if not os.path.exists(vmlinux):
        extract(debs[f"linux-image-{ABI}-dbg"], f"/usr/lib/debug/boot/vmlinux-{release}", vmlinux)
    initramfs = build_initramfs(debs[f"linux-image-{ABI}"], out)
    vmcore, command = boot_and_dump(vmlinuz, initramfs, out, a.mem)
    qemu_version = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True,
                                  text=True).stdout.split("\n")[0]
    meta = {"kernel": release, "source_version": VERSION,
            "packages": {name: {"version": VERSION, **spec} for name, spec in PACKAGES.items()},
            "vmcore": vmcore, "vmcore_bytes": os.path.getsize(vmcore), "vmlinux": vmlinux,
            "vmlinux_bytes": os.path.getsize(vmlinux), "vmlinuz": vmlinuz,
            "initramfs": initramfs, "initramfs_sha256": sha256(initramfs),
            "lvinit_from": os.path.relpath(INITRAMFS, ROOT),
            "qemu": qemu_version, "qemu_command": command}
    with open(meta_path, "w") as file:
        json.dump(meta, file, indent=2)
        file.write("\n")
    print(f"wrote {out}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
