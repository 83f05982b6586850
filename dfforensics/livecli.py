"""
``dfforensics sweep --qemu SOCKET [VMLINUX]``
---------------------------------------------

The sweep of running QEMU guests from the host, over their QMP sockets
(:mod:`dfforensics.dump.live`). Apart from :mod:`dfforensics.cli` so that the
dump commands' parser stays as it is: ``cli`` hands over any ``sweep`` command
line that names ``--qemu``.

One result per guest, in the order given. A guest that cannot be swept (its
socket busy, not there, a vmlinux of another kernel) gets its one
``dfforensics: error:`` line and the others are still swept; the exit status
is then 2. ``--every SECONDS`` sweeps again and again and writes one JSONL
event per new finding until interrupted (Ctrl-C, SIGTERM: exit 0).
"""

import argparse
import json
import types
import math
import os
import signal
import threading
import sys
import time
from datetime import datetime, timezone
from typing import Optional, Sequence, TextIO

from dfforensics.core.errors import InputError

__all__ = ("run_live_sweep", "wants_live_sweep")


def wants_live_sweep(argv: Sequence[str]) -> bool:
    """Whether a ``sweep`` command line is for running guests (names --qemu)."""
    return any(arg == "--qemu" or arg.startswith("--qemu=") for arg in argv)


def _parser(cli: types.ModuleType) -> argparse.ArgumentParser:
    parser = cli._Parser(
        prog="dfforensics sweep --qemu",
        description="Sweep running QEMU guests, read-only, over their QMP sockets: every thread's "
                    "user stack, sigaltstack and anonymous mappings, for frames the CPU pushed at "
                    "CPL 0. Each guest keeps running; the socket is let go as soon as its sweep is "
                    "done. Needs ptrace access to the QEMU process (its user, or root) and a guest "
                    "run with -device vmcoreinfo.",
    )
    parser.add_argument("--qemu", action="append", required=True, metavar="SOCKET",
                        help="a guest's QMP Unix socket (-qmp unix:SOCKET,server=on,wait=off); repeatable")
    parser.add_argument("vmlinux", metavar="VMLINUX", nargs="?",
                        help="the guests' kernel debug vmlinux; without it, types from the guest's BTF "
                             "and symbols from its kallsyms")
    parser.add_argument("--btf", metavar="FILE", help="without VMLINUX: a detached BTF of the guest's kernel")
    parser.add_argument("--every", type=float, metavar="SECONDS",
                        help="sweep again every SECONDS and write one JSONL event per new finding, "
                             "until interrupted")
    parser.add_argument("--greeting-timeout", type=float, default=None, metavar="SECONDS",
                        help="how long to wait for QEMU's QMP greeting before the socket counts as busy "
                             "(default 3)")
    cli._add_output_options(parser)
    return parser


def _check(args: argparse.Namespace, argv: Sequence[str]) -> None:
    if args.vmlinux is not None and args.btf is not None:
        raise InputError("--btf is for guests without VMLINUX: with VMLINUX, its DWARF gives the types")
    if args.every is not None:
        if not math.isfinite(args.every) or args.every <= 0:
            raise InputError(f"--every must be a positive number of seconds, not {args.every:g}")
        if any(arg == "--format" or arg.startswith("--format=") for arg in argv) or args.brief:
            raise InputError("--every writes JSONL events, one per new finding; --format and -q are "
                             "for single sweeps")
    if args.greeting_timeout is not None and (not math.isfinite(args.greeting_timeout)
                                              or args.greeting_timeout <= 0):
        raise InputError("--greeting-timeout must be a positive number of seconds")
    if len(set(args.qemu)) != len(args.qemu):
        raise InputError("a QMP socket is given twice")


def _known_kernels():
    """The guest kernel builds earlier sweeps saw (in the user's cache), so that a guest
    running one of them is swept without a pause even with no VMLINUX."""
    from dfforensics.dump.live import KnownKernels

    return KnownKernels.in_cache()


def _sweep(path: str, args: argparse.Namespace, known=None):
    from dfforensics.dump.live import GREETING_TIMEOUT, sweep_qemu

    return sweep_qemu(path, args.vmlinux, args.btf, args.greeting_timeout or GREETING_TIMEOUT, known)


def run_live_sweep(argv: Sequence[str], cli: types.ModuleType) -> int:
    """``dfforensics sweep --qemu SOCKET... [VMLINUX]``: the exit status.

    :param cli: :mod:`dfforensics.cli`, handed over by it (its parser, output options
        and exit statuses, shared with the dump commands; not imported: no cycle).
    """
    # The guest's vCPUs need the host's cores more than drgn's DWARF index does: with
    # one OpenMP thread a sweep takes as long and a busy guest loses ~1 % instead of
    # ~14 % while it runs (bench/README.md, "Live sweep"). Read by libgomp when drgn
    # loads, which is below; a user's own setting wins.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    args = _parser(cli).parse_args(argv)
    _check(args, argv)
    if args.every is not None:
        return _watch(args)
    reports, failed = [], False
    known = _known_kernels()
    for path in args.qemu:
        try:
            reports.append(_sweep(path, args, known))
        except InputError as error:
            # One line per guest that could not be swept; the others still are.
            sys.stderr.write(f"dfforensics: error: {error}\n")
            failed = True
    if reports:
        status = cli._finish(reports, args)
    else:
        status = cli.EXIT_OK
    return cli.EXIT_INPUT_ERROR if failed else status


def _frame_key(path: str, frame) -> tuple:
    return (path, frame.pid, frame.tid, frame.address, frame.rip, frame.cs, frame.rflags, frame.rsp,
            frame.ss, frame.orig_ax.raw)


def _event(stream: TextIO, record: dict) -> None:
    record = {"time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), **record}
    stream.write(json.dumps(record, sort_keys=False) + "\n")
    stream.flush()  # each event on disk at once: an interrupted watch loses none


def _watch(args: argparse.Namespace) -> int:
    """Sweep each guest every ``args.every`` seconds; one JSONL event per new frame, and
    one per change of a guest's state (its sweep's verdict, or why it could not be swept)."""
    from dfforensics.core.model import to_json_dict

    stream: TextIO = sys.stdout
    if args.output:
        try:
            stream = open(args.output, "a")
        except OSError as error:
            raise InputError(f"{args.output}: cannot write: {error.strerror or error}") from None
    seen: set = set()
    # Each guest's kernel build, learned by its first round: later rounds read its
    # VMCOREINFO without pausing it, even with no VMLINUX.
    known = _known_kernels()
    state: dict[str, Optional[str]] = {path: None for path in args.qemu}
    # Ctrl-C and SIGTERM (systemd, kill) end the watch between two sweeps, never in one: the
    # signal only asks, and the loop looks between guests and while it waits. (Raised in the
    # middle of a sweep, KeyboardInterrupt can land in a drgn callback, which swallows it.)
    # A second signal ends it at once.
    stop = threading.Event()

    def request_stop(*_: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    previous = {number: signal.signal(number, request_stop) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop.is_set():
            started = time.monotonic()
            for path in args.qemu:
                if stop.is_set():
                    break
                try:
                    report = _sweep(path, args, known)
                except InputError as error:
                    now = f"error: {error}"
                    if state[path] != now:
                        _event(stream, {"guest": path, "event": "error", "error": str(error)})
                    state[path] = now
                    continue
                sweep = report.sweep
                records = to_json_dict(report)["frames"] if report.frames else []
                for frame, record in zip(report.frames, records):
                    key = _frame_key(path, frame)
                    if key in seen:
                        continue
                    seen.add(key)
                    _event(stream, {"guest": path, "event": "cpl0-frame", "kernel_release": report.kernel.release,
                                    "comm": _comm(sweep, frame), "frame": record})
                now = f"sweep: {sweep.verdict.value}"
                if state[path] != now:
                    _event(stream, {"guest": path, "event": "sweep", "verdict": sweep.verdict.value,
                                    "summary": sweep.summary, "seconds": report.source.get("seconds_connected")})
                state[path] = now
            stop.wait(max(0.0, args.every - (time.monotonic() - started)))
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        if stream is not sys.stdout:
            stream.close()


def _comm(sweep, frame) -> Optional[str]:
    for stack in sweep.stacks:
        if stack.pid == frame.pid and frame.address in stack.frame_addresses:
            return stack.comm
    return None
