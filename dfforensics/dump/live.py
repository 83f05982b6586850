"""
Live guests over QMP
--------------------

Sweep a running QEMU guest from the host, read-only, over its QMP socket
(drgn's :meth:`drgn.Program.set_qemu_qmp`): connect, sweep, let go. The guest
keeps running the whole time; nothing is written to it and no QMP command that
changes it is sent (drgn asks QEMU where guest RAM is and, with ptrace access
to the QEMU process, reads it directly from QEMU's memory).

A QMP socket serves one client at a time: a second client's ``connect()``
succeeds (the kernel queues it) but QEMU sends it nothing until the first one
leaves. So before drgn is given the connection, the greeting QEMU sends each
client it serves is waited for with a timeout, and *peeked*, not read (drgn
reads it itself): no greeting in time means another client holds the socket,
said in one line. The connection is closed as soon as the sweep is done, so
that the next client (libvirt's, another sweep) is not kept waiting.

drgn identifies the guest through its VMCOREINFO, which it reads with a one-byte
``dump-guest-memory``: QEMU stops the guest for it. Where the guest kernel's build is
known (a VMLINUX, or a previous sweep of the same socket), the note is read instead
without pausing anything (:mod:`dfforensics.dump.livevmcoreinfo`) and handed to drgn,
which then skips its dump; the report says which way it was read.
"""

import errno
import gc
import json
import os
import select
import socket
import stat
import time
from dataclasses import dataclass
from typing import Final, Optional

import drgn
from drgn import Program

from dfforensics.core.errors import InputError
from dfforensics.core.model import Report
from dfforensics.dump.livevmcoreinfo import (LANDMARK_SYMBOLS, HumanMonitor, KernelLandmarks, NoteNotFound,
                                             find_vmcoreinfo, parse_note, search_vmcoreinfo)

__all__ = ("GREETING_TIMEOUT", "KnownKernels", "QmpBusy", "connect_qmp", "open_qemu", "sweep_qemu")

#: How long a QMP greeting is waited for before the socket counts as busy. QEMU sends
#: it at once to a client it serves (under a millisecond on an idle host).
GREETING_TIMEOUT = 3.0


class QmpBusy(InputError):
    """Another client holds the QMP socket."""


def _check_socket_path(path: str) -> None:
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise InputError(f"QMP socket {path}: no such file") from None
    except OSError as error:
        raise InputError(f"QMP socket {path}: cannot read: {error.strerror or error}") from None
    if not stat.S_ISSOCK(mode):
        raise InputError(f"QMP socket {path}: not a socket (QEMU makes one with "
                         f"-qmp unix:{path},server=on,wait=off)")


def connect_qmp(path: str, timeout: float = GREETING_TIMEOUT) -> socket.socket:
    """Connect to a QMP Unix socket and wait for QEMU's greeting without reading it.

    :raises QmpBusy: when the greeting does not come within ``timeout`` (another
        client is connected).
    :raises InputError: when nothing QMP listens there.
    """
    _check_socket_path(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            raise InputError(f"QMP socket {path}: nothing listens on it (QEMU not running?)") from None
        except socket.timeout:
            raise QmpBusy(_busy(path, timeout)) from None
        except OSError as error:
            raise InputError(f"QMP socket {path}: cannot connect: {error.strerror or error}") from None
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([sock], [], [], left)[0]:
                raise QmpBusy(_busy(path, timeout))
            peeked = sock.recv(65536, socket.MSG_PEEK)
            if not peeked:
                raise InputError(f"QMP socket {path}: closed by QEMU before its greeting")
            if b"\n" in peeked:
                break
            time.sleep(0.005)  # the greeting is one line: wait for the rest of it
        first_line = peeked.split(b"\n", 1)[0]
        if b'"QMP"' not in first_line:
            raise InputError(f"QMP socket {path}: not a QMP monitor (it sent {first_line[:60]!r})")
        sock.settimeout(None)
        return sock
    except BaseException:
        sock.close()
        raise


def _busy(path: str, timeout: float) -> str:
    return (f"QMP socket {path}: busy: QEMU sent no greeting in {timeout:g} s, so another client "
            "is connected (a QMP socket serves one client at a time; give the guest a second "
            "-qmp socket for dfforensics, see README 'Live guests')")


class _Connection:
    """The QMP connection, handed to drgn: drgn owns the descriptor it is given and
    closes it when its Program goes, so it gets a duplicate, and :meth:`release`
    closes that one too if drgn did not (an error path), identified by its inode
    so that a number reused since is never closed."""

    def __init__(self, sock: socket.socket) -> None:
        self.fd = os.dup(sock.fileno())
        self.inode = os.fstat(self.fd).st_ino
        sock.close()  # the duplicate holds the connection open

    def release(self) -> None:
        gc.collect()  # the Program, and with it drgn's descriptor, goes now
        try:
            still_ours = os.fstat(self.fd).st_ino == self.inode
        except OSError:
            return
        if still_ours:
            os.close(self.fd)


class KnownKernels:
    """The kernel builds seen before, so that a guest running one of them is read
    without a pause even with no VMLINUX: the build each socket ran last, and, made by
    :meth:`in_cache`, every build any sweep saw, kept in the user's cache (the entry
    ``live-kernels``) for later runs."""

    #: Builds kept in the cache, newest first: a host runs a handful of guest kernels.
    KEPT = 64
    _ENTRY: Final = ("live", "kernels")

    def __init__(self, saved: bool = False) -> None:
        self._by_socket: dict[str, KernelLandmarks] = {}
        self._keep = saved
        self._saved: list[KernelLandmarks] = self._load() if saved else []

    @classmethod
    def in_cache(cls) -> "KnownKernels":
        return cls(saved=True)

    def _load(self) -> list[KernelLandmarks]:
        from dfforensics.inputs.formats import read_keyed

        try:
            records = json.loads(read_keyed(*self._ENTRY) or b"[]")
        except (InputError, ValueError):
            return []  # no usable cache, or an entry not ours: nothing remembered
        if not isinstance(records, list):
            return []
        return [found for found in map(KernelLandmarks.from_saved, records[:self.KEPT]) if found is not None]

    def candidates(self, path: str) -> list[KernelLandmarks]:
        """The builds to try for a guest, the one its socket ran last first."""
        last = self._by_socket.get(path)
        return ([last] if last else []) + [build for build in self._saved if build != last]

    def remember(self, path: str, landmarks: Optional[KernelLandmarks]) -> None:
        from dfforensics.inputs.formats import write_keyed

        if landmarks is None:
            return
        self._by_socket[path] = landmarks
        if not self._keep or (self._saved and self._saved[0] == landmarks):
            return
        self._saved = ([landmarks] + [build for build in self._saved if build != landmarks])[:self.KEPT]
        try:
            write_keyed(*self._ENTRY, json.dumps([build.saved() for build in self._saved]).encode())
        except InputError:
            pass  # only a pause saved next time is lost: the sweep itself is unaffected


@dataclass
class LiveGuest:
    """An open program on a running guest and the connection it reads through."""

    prog: Program
    connection: _Connection
    path: str
    debug_info: str
    #: How VMCOREINFO was read: without a pause, or by drgn's dump (and why).
    vmcoreinfo_source: str
    #: The guest kernel's landmarks, for a later pause-free open of the same build.
    landmarks: Optional[KernelLandmarks]

    def close(self) -> None:
        """Let go of the QMP socket now: the next client must not wait for our exit."""
        self.prog = None  # type: ignore[assignment]
        self.connection.release()


#: What drgn's own way of reading VMCOREINFO costs the guest (dump-guest-memory).
DRGN_DUMP_SOURCE = ("read by drgn with a one-byte dump-guest-memory: QEMU paused the guest for it "
                    "(about half a millisecond)")


def _vmcoreinfo_without_pause(path: str, builds: list[KernelLandmarks], search: bool,
                              timeout: float) -> tuple[Optional[bytes], str, bool]:
    """The guest's VMCOREINFO read without a pause: (note, how, whether the search found it),
    or (None, why not, False). One HMP connection reads the live page-table root, and, for
    a known build, the note itself with ``xp``; else, where ``search``, the image is searched
    (:func:`_vmcoreinfo_by_search`)."""
    problems = [] if builds else ["no VMLINUX, and no earlier sweep saw this build"]
    monitor = None
    try:
        monitor = HumanMonitor(connect_qmp(path, timeout))
        cr3, cr4 = monitor.control_registers()
        if builds:
            try:
                text, how = find_vmcoreinfo(monitor.read_physical, cr3, cr4, builds)
                return text, how, False
            except NoteNotFound as problem:
                problems.append(f"the known build's note could not be read: {problem}")
    except (NoteNotFound, OSError, ValueError) as problem:
        return None, "; ".join(problems + [f"the live page-table root could not be read: {problem}"]), False
    finally:
        if monitor is not None:
            monitor.close()
    if not search:
        return None, "; ".join(problems), False
    text, how = _vmcoreinfo_by_search(path, cr3, cr4, timeout)
    return (text, how, True) if text is not None else (None, "; ".join(problems + [how]), False)


def _landmarks_of(prog: Program) -> Optional[KernelLandmarks]:
    """The loaded kernel's landmarks, from its symbols (DWARF or kallsyms) and memory."""
    symbols = {}
    for name in ("_text", *LANDMARK_SYMBOLS):
        try:
            symbols[name] = prog.symbol(name).address
        except LookupError:
            pass
    try:
        banner = prog.read(symbols["linux_banner"], prog.symbol("linux_banner").size or 512)
    except (KeyError, LookupError, drgn.FaultError):
        return None
    return KernelLandmarks.from_symbols(banner.split(b"\0", 1)[0], symbols)


def open_qemu(path: str, vmlinux: Optional[str] = None, btf: Optional[str] = None,
              timeout: float = GREETING_TIMEOUT, known: Optional[KnownKernels] = None) -> LiveGuest:
    """Open a running QEMU guest over its QMP socket, with its kernel's debug info.

    With ``vmlinux``, it must be the guest kernel's (build ID, as for dumps);
    without it, symbols come from the guest's kallsyms and types from its BTF
    (or ``btf``). VMCOREINFO is read without pausing the guest: through the
    kernel's pointer to it where the build is known (``vmlinux``, or ``known``),
    else found by that pointer in the kernel image and confirmed by the kernel's
    own symbols; only where both fail does drgn read it with its one-byte
    dump-guest-memory (``-device vmcoreinfo`` needed), which pauses the guest.
    """
    from dfforensics.inputs.formats import decompressed

    vmlinux_path = decompressed(vmlinux, "VMLINUX") if vmlinux is not None else None
    builds = known.candidates(path) if known is not None else []
    if vmlinux_path is not None:
        from dfforensics.inputs.elffacts import vmlinux_facts

        facts = vmlinux_facts(vmlinux_path, vmlinux)
        given = KernelLandmarks.from_symbols(facts.banner or b"", facts.symbols)
        builds = [given] if given else builds
    vmcoreinfo, how, searched = _vmcoreinfo_without_pause(path, builds, vmlinux_path is None, timeout)
    if vmcoreinfo is None:
        how = f"{DRGN_DUMP_SOURCE}; it could not be read without: {how}"
    guest = _open(path, vmcoreinfo, how, vmlinux, vmlinux_path, btf, timeout)
    if searched and not _kernel_points_at(guest.prog, vmcoreinfo):
        # The note found is not the one the kernel's own symbols lead to: drgn's way.
        guest.close()
        guest = _open(path, None, f"{DRGN_DUMP_SOURCE}; the note found in memory was not the one "
                      "the kernel's vmcoreinfo_note points at", vmlinux, vmlinux_path, btf, timeout)
    if known is not None:
        known.remember(path, guest.landmarks)
    return guest


def _open(path: str, vmcoreinfo: Optional[bytes], how: str, vmlinux: Optional[str],
          vmlinux_path: Optional[str], btf: Optional[str], timeout: float) -> LiveGuest:
    """One drgn program on the guest: with ``vmcoreinfo`` given, drgn skips its dump."""
    connection = _Connection(connect_qmp(path, timeout))
    prog = Program(vmcoreinfo=vmcoreinfo) if vmcoreinfo is not None else Program()
    try:
        try:
            # drgn takes the connection as it is, greeting unread: no second client.
            prog.set_qemu_qmp(connection.fd)
            if vmcoreinfo is not None:
                prog.set_linux_kernel_custom(vmcoreinfo, True)
        except (OSError, ValueError) as error:
            raise InputError(f"QMP socket {path}: {_qmp_problem(error)}") from None
        except Exception as error:  # libdrgn's bare Exception
            raise InputError(f"QMP socket {path}: {_qmp_problem(error)}") from None
        if not prog.flags & drgn.ProgramFlags.IS_LINUX_KERNEL:
            raise InputError(f"QMP socket {path}: the guest is not identified as Linux (run QEMU with "
                             "-device vmcoreinfo, and a guest kernel with CONFIG_FW_CFG_SYSFS)")
        debug_info = _load_debug_info(prog, path, vmlinux, vmlinux_path, btf)
        return LiveGuest(prog, connection, path, debug_info, how, _landmarks_of(prog))
    except BaseException:
        prog = None  # type: ignore[assignment]
        connection.release()
        raise


#: What the search reads through before drgn knows the kernel: physical memory only.
_BOOTSTRAP_VMCOREINFO = b"OSRELEASE=unknown\nPAGESIZE=4096\nKERNELOFFSET=0\nSYMBOL(swapper_pg_dir)=ffffffff82000000\n"


def _vmcoreinfo_by_search(path: str, cr3: int, cr4: int, timeout: float) -> tuple[Optional[bytes], str]:
    """VMCOREINFO found by :func:`search_vmcoreinfo` from the live root ``cr3``, or None
    and why not. Physical memory is read by a drgn program that knows no kernel yet
    (given a stand-in VMCOREINFO, drgn skips its dump)."""
    connection = _Connection(connect_qmp(path, timeout))
    prog = Program(vmcoreinfo=_BOOTSTRAP_VMCOREINFO)
    try:
        prog.set_qemu_qmp(connection.fd)

        def read(address: int, size: int) -> Optional[bytes]:
            try:
                return prog.read(address, size, True)
            except (drgn.FaultError, ValueError):
                return None

        return search_vmcoreinfo(read, cr3, cr4)
    except NoteNotFound as problem:
        return None, f"no note found in memory: {problem}"
    except Exception as problem:  # libdrgn's bare Exception, OSError: drgn's way is left
        return None, f"guest memory could not be searched: {problem}"
    finally:
        prog = None  # type: ignore[assignment]
        connection.release()


def _kernel_points_at(prog: Program, vmcoreinfo: bytes) -> bool:
    """Whether the kernel's own ``vmcoreinfo_note`` (by its symbols) leads to this note."""
    try:
        pointer = prog.read_u64(prog.symbol("vmcoreinfo_note").address)
        header = prog.read(pointer, 12)
        size = 12 + (int.from_bytes(header[:4], "little") + 3) // 4 * 4 + int.from_bytes(header[4:8], "little")
        return size <= 1 << 16 and parse_note(prog.read(pointer, size)) == vmcoreinfo
    except (LookupError, drgn.FaultError, ValueError, OverflowError):
        return False


def _qmp_problem(error: Exception) -> str:
    text = str(error)
    if isinstance(error, PermissionError) or getattr(error, "errno", None) == errno.EPERM:
        return (f"{text} (reading guest RAM needs ptrace access to the QEMU process: run as its "
                "user or root, with kernel.yama.ptrace_scope allowing it)")
    return text


def _load_debug_info(prog: Program, path: str, vmlinux: Optional[str], vmlinux_path: Optional[str],
                     btf: Optional[str]) -> str:
    from dfforensics.dump import opendump

    if vmlinux is not None and vmlinux_path is not None:
        try:
            opendump._load_vmlinux(prog, vmlinux_path, None, f"QMP guest {path}", vmlinux)
        except InputError as error:
            # The dump reader's words ("VMCORE", "the dump's") said of the running guest.
            raise InputError(str(error).replace("VMCORE QMP guest", "the QMP guest")
                             .replace("the dump's", "the guest's")) from None
        return "DWARF from VMLINUX"
    from dfforensics.dump import guestdebuginfo
    from dfforensics.inputs.btf import load_btf

    searched = guestdebuginfo.load_kallsyms(prog)
    guestdebuginfo.set_kernel_image_range(prog)
    if btf is None:
        found, how = guestdebuginfo.btf_from_memory(prog), guestdebuginfo.DEBUG_INFO_SOURCE
    else:
        try:
            with open(btf, "rb") as file:
                found = load_btf(file.read(), btf, guestdebuginfo._vmcoreinfo(prog).get("BUILD-ID"))
        except OSError as error:
            raise InputError(f"BTF {btf}: {error.strerror or error}") from None
        how = guestdebuginfo.DETACHED_SOURCE.format(path=btf)
    guestdebuginfo.use_guest_debug_info(prog, found)
    if searched:
        guestdebuginfo.check_searched_kallsyms(prog)
    return how


def sweep_qemu(path: str, vmlinux: Optional[str] = None, btf: Optional[str] = None,
               timeout: float = GREETING_TIMEOUT, known: Optional[KnownKernels] = None) -> Report:
    """Connect to a running guest, sweep every user stack, let go: the report."""
    from dfforensics.dump.analysis import analyze

    guest = open_qemu(path, vmlinux, btf, timeout, known)
    started = time.monotonic()
    try:
        source = {"kind": "qemu", "path": path, "vmlinux": vmlinux, "debug_info": guest.debug_info,
                  "vmcoreinfo": guest.vmcoreinfo_source, "live": True}
        try:
            report = analyze(guest.prog, source, sweep=True)
        except drgn.FaultError as error:
            raise InputError(f"QMP socket {path}: guest memory the sweep needs could not be read "
                             f"({error})") from None
        if vmlinux is None:
            # What the lookups found, for the next sweep of this build (an --every loop's
            # next round, or another guest): as after a dump's analysis.
            from dfforensics.dump.guestdebuginfo import keep_answers

            keep_answers(guest.prog)
    finally:
        guest.close()
    report.source["seconds_connected"] = round(time.monotonic() - started, 3)
    return report
