"""Real running QEMU guests for the live-sweep tests and bench: the committed 6.1 bzImage and
the lvinit initramfs (fixtures/build/live.py), booted under TCG with QMP sockets; with
``bug=True`` the fixtures builder's gdbstub emulation of the hypervisor bug
(fixtures/build/gdb/dfdrive.py, mode sweep) makes a CPL-0 delivery at each of the victim's
stations and records the frames the CPU pushed. Everything lives in a temporary directory
and every QEMU is ended by whoever started it (:meth:`Guest.close`)."""

import json
import lzma
import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).parents[1]
FIXTURES = ROOT / "fixtures"
LIVE = json.loads((FIXTURES / "live" / "live.json").read_text())
DFDRIVE = FIXTURES / "build" / "gdb" / "dfdrive.py"
QEMU = "qemu-system-x86_64"
# The interrupt and exception entry points gdb watches (the fixtures builder's choice, builder.py).
_ENTRY = re.compile(r"asm_(sysvec_|exc_|common_interrupt$|spurious_interrupt$)")


def missing_tools() -> list[str]:
    return [tool for tool in (QEMU, "gdb") if shutil.which(tool) is None]


def unpack(directory: Path) -> dict[str, Path]:
    """Decompress the kernel image and the debug vmlinux into ``directory`` (once)."""
    paths = {"bzImage": directory / "bzImage", "vmlinux": directory / "vmlinux"}
    sources = {"bzImage": FIXTURES / "live" / LIVE["kernel"], "vmlinux": FIXTURES / "live" / LIVE["vmlinux"]}
    for name, path in paths.items():
        if not path.exists():
            with lzma.open(sources[name]) as packed, open(str(path) + ".tmp", "wb") as plain:
                shutil.copyfileobj(packed, plain, 1 << 20)
            os.rename(str(path) + ".tmp", path)
    paths["initramfs"] = FIXTURES / "live" / LIVE["initramfs"]  # the kernel unpacks it (CONFIG_RD_XZ)
    return paths


def entry_points(vmlinux: Path) -> dict[str, str]:
    """{address: name} of the entry points, from the vmlinux symbol table (as System.map gives them)."""
    from elftools.elf.elffile import ELFFile

    with open(vmlinux, "rb") as file:
        symtab = ELFFile(file).get_section_by_name(".symtab")
        return {hex(sym["st_value"]): sym.name for sym in symtab.iter_symbols()
                if _ENTRY.match(sym.name) and "xen" not in sym.name and sym["st_value"]}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Qmp:
    """A minimal QMP client for the test's own checks (query-status, dump, quit)."""

    def __init__(self, path: Path, timeout: float = 30.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self.file = self.sock.makefile("rw")
        self.file.readline()
        self.cmd("qmp_capabilities")

    def cmd(self, name: str, **arguments):
        self.file.write(json.dumps({"execute": name, "arguments": arguments}) + "\n")
        self.file.flush()
        while True:
            reply = json.loads(self.file.readline())
            if "return" in reply:
                return reply["return"]
            if "error" in reply:
                raise RuntimeError(f"QMP {name}: {reply['error']}")

    def close(self) -> None:
        self.file.close()
        self.sock.close()


class Guest:
    """One running guest: ``qmp`` is the socket the sweep uses, ``qmp2`` the test's own."""

    def __init__(self, directory: Path, name: str, threads: int = 4, bug: bool = False,
                 memory: str = "128M", churn: bool = False) -> None:
        self.dir = directory / name
        self.dir.mkdir(parents=True)
        self.qmp, self.qmp2 = self.dir / "qmp.sock", self.dir / "qmp2.sock"
        self.console = self.dir / "console.log"
        self.bug = bug
        paths = unpack(directory)
        self.vmlinux = paths["vmlinux"]
        self.port = free_port() if bug else None
        append = f"{LIVE['append']} lvthreads={threads}" + (" lvchurn=1" if churn else "")
        command = [QEMU, "-machine", "pc", "-accel", "tcg", "-cpu", "qemu64", "-m", memory, "-smp", "1",
                   "-name", f"{name},debug-threads=on",  # the vCPU thread named: bench/live_sweep.py
                   "-display", "none", "-monitor", "none", "-serial", f"file:{self.console}", "-no-reboot",
                   "-device", "vmcoreinfo", "-kernel", str(paths["bzImage"]), "-initrd", str(paths["initramfs"]),
                   "-append", append, "-qmp", f"unix:{self.qmp},server=on,wait=off",
                   "-qmp", f"unix:{self.qmp2},server=on,wait=off"]
        if bug:
            command += ["-gdb", f"tcp:127.0.0.1:{self.port}", "-S"]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=open(self.dir / "qemu.err", "w"))
        self.gdb: Optional[subprocess.Popen] = None
        self._wait_for_sockets()
        if bug:
            self._drive()

    def _wait_for_sockets(self) -> None:
        deadline = time.monotonic() + 30
        while not (self.qmp.exists() and self.qmp2.exists()):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"QEMU did not start: {(self.dir / 'qemu.err').read_text()}")
            time.sleep(0.05)

    def _drive(self) -> None:
        """gdb emulates the bug at the victim's stations (the guest waits under -S until gdb
        continues it); it records each frame, lets 50 timer ticks pass, re-reads the frames
        from their task's page tables and detaches.

        The victim must survive its deliveries, so gdb heals SS at each handler's entry, once
        the CPU's frame is on the user stack (``heal_ss``, as the fixtures builder does on
        5.10): otherwise an interrupt nested in the handler saves SS 0x2b in kernel mode and
        its iret home faults, and the guest dies of it whenever a timer tick lands there
        (seen here on 6.1: a recursion of page faults, then a #DF, on QEMU 7.2.22)."""
        params = {"port": self.port, "qmp2": str(self.qmp2), "variant": "ss2b", "mode": "sweep",
                  "out": str(self.dir / "drive.json"), "entries": entry_points(self.vmlinux),
                  "station": LIVE["station"], "expect": LIVE["stations"], "settle_ticks": 50,
                  "heal_ss": True}
        env = dict(os.environ, DF_PARAMS=json.dumps(params))
        self.gdb = subprocess.Popen(["gdb", "-nx", "-batch", "-ex", f"file {self.vmlinux}", "-x", str(DFDRIVE)],
                                    env=env, stdout=open(self.dir / "gdb.log", "w"), stderr=subprocess.STDOUT)

    def drive_result(self, timeout: float = 300) -> dict:
        """What gdb recorded: the deliveries and the frames re-read after them."""
        self.gdb.wait(timeout=timeout)
        truth = json.loads((self.dir / "drive.json").read_text())
        if "error" in truth or truth.get("crashed"):
            raise RuntimeError(f"the gdb driver failed: {truth.get('error') or truth.get('final')}; "
                               f"see {self.dir / 'gdb.log'}")
        return truth

    def wait_console(self, pattern: str, timeout: float = 120) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.console.exists():
                found = re.search(pattern, self.console.read_text(errors="replace"))
                if found:
                    return found
            if self.process.poll() is not None:
                break
            time.sleep(0.2)
        raise RuntimeError(f"no {pattern!r} on the console of {self.dir.name}: "
                           f"{self.console.read_text(errors='replace')[-2000:]}")

    def status(self) -> str:
        qmp = Qmp(self.qmp2)
        try:
            return qmp.cmd("query-status")["status"]
        finally:
            qmp.close()

    def close(self) -> None:
        if self.gdb is not None and self.gdb.poll() is None:
            self.gdb.kill()
            self.gdb.wait()
        if self.process.poll() is None:
            try:
                qmp = Qmp(self.qmp2, timeout=5)
                qmp.cmd("quit")
                qmp.close()
            except (OSError, RuntimeError, ValueError):
                pass
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
