"""
Command line
------------

``dfforensics log FILE...`` analyses console logs; ``dfforensics VMCORE
VMLINUX`` analyses a dump. Errors in the input end in one line
``dfforensics: error: ...`` on stderr and exit status 2, never a traceback.
"""

import argparse
import math
import os
import sys
from typing import Any, NoReturn, Optional, Sequence, TextIO

from dfforensics.core.errors import InputError
from dfforensics.core.process import exit_without_teardown, import_drgn_helpers_on_demand, skip_drgn_plugins

__all__ = ("main",)

EXIT_OK = 0
EXIT_INPUT_ERROR = 2
#: With --exit-code, the status says the verdict (0 for no-match and no-double-fault).
EXIT_POSSIBLE = 3
EXIT_MATCH = 4

USAGE = """usage: dfforensics VMCORE [VMLINUX] [options]   is this crash the hypervisor's CPL corruption?
       dfforensics sweep VMCORE [VMLINUX] [options] CPU-pushed frames on every user stack
       dfforensics sweep --qemu SOCKET [VMLINUX]    the same of a running QEMU guest, over QMP
       dfforensics log FILE... [options]            the same questions of console logs
       dfforensics triage PATH... [options]         whole archives, in parallel
       dfforensics cache [clear]                    where decompressed inputs are kept
       dfforensics --version
'dfforensics COMMAND --help' says more.
"""
# Console logs larger than this are not console logs.
MAX_LOG_BYTES = 256 * 1024 * 1024


class _Formatter(argparse.HelpFormatter):
    """argparse's formatter, told the terminal width as shutil.get_terminal_size() finds it
    ($COLUMNS, then the terminal, else 80): argparse makes one for every option it adds,
    and its own asks shutil, whose import (with bz2 and lzma) is ~2 ms of every start."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: Optional[int] = None) -> None:
        if width is None:
            width = _terminal_columns() - 2
        super().__init__(prog, indent_increment, max_help_position, width)


def _terminal_columns() -> int:
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_INPUT_ERROR, f"dfforensics: error: {message}\n")


def _add_output_options(parser: argparse.ArgumentParser) -> None:
    # The renderers (and the result model) load here, for the commands that print a
    # report: triage starts its workers before it needs them.
    from dfforensics.core.render import FORMATS

    parser.add_argument("--format", choices=sorted(FORMATS), default="table",
                        help="output format (default: table)")
    parser.add_argument("-o", "--output", metavar="FILE", help="write the report to FILE")
    parser.add_argument("-q", "--brief", action="store_true",
                        help="print the verdict line only (with --format table)")
    parser.add_argument("--exit-code", action="store_true",
                        help=f"exit with the verdict for scripts: {EXIT_MATCH} match, {EXIT_POSSIBLE} "
                             f"possible, 0 no-match or no-double-fault ({EXIT_INPUT_ERROR}: bad input)")


def _log_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="dfforensics log",
        description="Find double-fault reports in console logs (serial captures, dmesg, "
                    "vmcore-dmesg.txt, mail pastes) and say whether they carry the marks of "
                    "the hypervisor CPL-corruption signature. A log alone can only say "
                    "'possible'; the dump proves it.",
    )
    parser.add_argument("files", nargs="+", metavar="FILE", help="console log ('-' for stdin)")
    parser.add_argument("--environment", choices=("guest", "bare-metal"),
                        help="what the machine was, when the log does not say "
                             "(old kernels print no 'Hardware name:')")
    _add_output_options(parser)
    return parser


def _vmcore_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="dfforensics",
        description="Does this Linux x86_64 guest crash match the hypervisor CPL-corruption "
                    "double-fault signature? Proven from guest memory, with evidence. "
                    "Other commands: 'dfforensics log FILE...', 'dfforensics triage PATH...', "
                    "'dfforensics sweep VMCORE VMLINUX'.",
    )
    _add_dump_arguments(parser)
    return parser


def _add_dump_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("vmcore", metavar="VMCORE",
                        help="the crash dump (ELF, kdump-compressed or flattened; .gz/.xz/.zst)")
    parser.add_argument("vmlinux", metavar="VMLINUX", nargs="?",
                        help="the kernel's debug-info vmlinux (.gz/.xz/.zst); without it, types come "
                             "from the guest's BTF and symbols from its kallsyms")
    parser.add_argument("--btf", metavar="FILE",
                        help="without VMLINUX: a detached BTF file of the dump's kernel build "
                             "(pahole --btf_encode_detached), for kernels without CONFIG_DEBUG_INFO_BTF")
    parser.add_argument("--module-debuginfo", action="append", default=[], metavar="PATH",
                        help="debug info of a module (repeatable)")
    _add_output_options(parser)


def _sweep_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="dfforensics sweep",
        description="Scan every thread's user stack for frames the CPU pushed at CPL 0: "
                    "proof of the hypervisor's CPL corruption in any dump, crashed or not.",
    )
    _add_dump_arguments(parser)
    return parser


def _check_dump_arguments(args: argparse.Namespace) -> None:
    """Catch the argument mistakes people make before any file is read for real."""
    from dfforensics.inputs.formats import elf_type

    if args.vmlinux is None:
        if args.module_debuginfo:
            raise InputError("--module-debuginfo needs VMLINUX: module debug info is DWARF, read "
                             "with the kernel's")
        return
    if args.btf is not None:
        raise InputError("--btf is for dumps without VMLINUX: with VMLINUX, its DWARF gives the types")
    vmcore_type, vmlinux_type = elf_type(args.vmcore), elf_type(args.vmlinux)
    if vmcore_type == "executable" and vmlinux_type == "core":
        raise InputError(f"VMCORE {args.vmcore} is a kernel image and VMLINUX {args.vmlinux} a core "
                         "dump: the dump comes first (dfforensics VMCORE VMLINUX, unlike crash's "
                         "'crash vmlinux vmcore')")
    for path in args.module_debuginfo:
        kind = {"executable": "a kernel image (ELF executable)", "core": "a core dump"}.get(elf_type(path))
        if kind is None and os.path.exists(path) and os.path.exists(args.vmlinux) \
                and os.path.samefile(path, args.vmlinux):
            kind = "VMLINUX itself"
        if kind is not None:
            raise InputError(f"--module-debuginfo {path}: {kind}, not a module's debug info (a .ko "
                             "or .ko.debug); VMLINUX is the second argument")


def _finish(reports: list, args: argparse.Namespace) -> int:
    """Print the reports as asked, and return the exit status."""
    if args.brief and args.format == "table":
        text = "".join(report.headline + "\n" for report in reports)
    else:
        text = _render(reports, args.format)
    _write(text, args.output)
    if not args.exit_code:
        return EXIT_OK
    verdicts = {report.verdict.value for report in reports}
    return EXIT_MATCH if "match" in verdicts else EXIT_POSSIBLE if "possible" in verdicts else EXIT_OK


def _run_sweep(argv: Sequence[str]) -> int:
    from dfforensics.livecli import run_live_sweep, wants_live_sweep

    if wants_live_sweep(argv):  # running guests over QMP: dfforensics/livecli.py
        return run_live_sweep(argv, sys.modules[__name__])
    from dfforensics.dump.analysis import analyze_vmcore_files

    args = _sweep_parser().parse_args(argv)
    _check_dump_arguments(args)
    report = analyze_vmcore_files(args.vmcore, args.vmlinux, args.module_debuginfo, sweep=True, btf=args.btf)
    return _finish([report], args)


def _triage_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="dfforensics triage",
        description="Triage crash archives: find every dump (by content: ELF, kdump-compressed, "
                    "flattened, compressed) and console log under PATHs, analyse each in its own "
                    "worker, and stream one row per dump. The archive is only read.",
    )
    parser.add_argument("paths", nargs="+", metavar="PATH")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="parallel workers, one CPU each (default: every core)")
    parser.add_argument("--format", choices=("table", "jsonl", "csv"), default="table")
    parser.add_argument("-o", "--output", metavar="FILE", help="write rows to FILE")
    parser.add_argument("--debuginfo-dir", action="append", default=[], metavar="DIR",
                        help="a tree holding debug vmlinux files (repeatable)")
    parser.add_argument("--resume", action="store_true",
                        help="skip dumps already in FILE (same path, size and mtime)")
    parser.add_argument("--timeout", type=float, default=600.0, metavar="SECONDS",
                        help="per-dump time limit (default 600)")
    parser.add_argument("--memory-limit", type=int, default=8192, metavar="MIB",
                        help="per-dump address-space cap in MiB (default 8192)")
    parser.add_argument("--require-debuginfo", action="store_true",
                        help="without a debug vmlinux, analyse the console log rather than the "
                             "guest's own BTF and kallsyms")
    parser.add_argument("--scheduler", metavar="tcp://HOST:PORT",
                        help="run the per-dump jobs on an existing Dask cluster (dfforensics[cluster])")
    return parser


def _check_triage_arguments(args: argparse.Namespace) -> None:
    if args.jobs < 1:
        raise InputError("--jobs must be at least 1")
    if args.resume and (not args.output or args.format == "table"):
        raise InputError("--resume needs -o FILE with --format jsonl or csv")
    for path in args.paths + args.debuginfo_dir:
        if not os.path.exists(path):
            raise InputError(f"{path}: no such file or directory")
    if not math.isfinite(args.timeout) or args.timeout <= 0:
        raise InputError(f"--timeout must be a positive number of seconds, not {args.timeout:g}")
    if args.memory_limit < 0:
        raise InputError("--memory-limit must not be negative (0: no cap)")
    cpus = len(os.sched_getaffinity(0))
    if args.jobs > cpus:
        # Not an error (the user may know the dumps wait on I/O), but each job is a
        # drgn process of its own: more of them than CPUs only compete for them.
        sys.stderr.write(f"dfforensics: warning: --jobs {args.jobs} is more than the {cpus} CPUs "
                         "this process may use; at most one worker per dump is started\n")


def _open_output(args: argparse.Namespace) -> TextIO:
    if not args.output:
        return sys.stdout
    if os.path.isdir(args.output):
        raise InputError(f"{args.output}: is a directory; -o takes the rows file")
    try:
        return open(args.output, "a" if args.resume else "w", newline="")
    except OSError as error:
        raise InputError(f"{args.output}: cannot write: {error.strerror or error}") from None


def _run_triage(argv: Sequence[str]) -> int:
    from dfforensics.batch import triage

    args = _triage_parser().parse_args(argv)
    _check_triage_arguments(args)
    if args.resume and args.output and os.path.isfile(args.output):
        _drop_half_line(args.output)
    carried = triage.load_rows(args.output) if args.resume else []
    done = {triage.row_key(row) for row in carried}
    new_file = not (args.resume and args.output and os.path.exists(args.output)
                    and os.path.getsize(args.output))
    stream = _open_output(args)
    try:
        try:
            rows = triage.run_triage(args.paths, args.jobs, args.format, stream, args.debuginfo_dir,
                                     args.timeout, args.memory_limit << 20, done, new_file,
                                     scheduler=args.scheduler,
                                     require_debuginfo=args.require_debuginfo)
            if not rows and not carried:
                raise InputError("no dump or console log found under " + ", ".join(args.paths))
            if args.format == "table":
                stream.write(triage.rows_table(rows))
        finally:
            if stream is not sys.stdout:
                stream.close()
    except OSError as error:
        raise InputError(f"{args.output or 'stdout'}: cannot write: {error.strerror or error}") from None
    summary = triage.summary_text(carried + rows, carried_over=len(carried))
    if args.output or args.format == "table":
        _write_stdout("\n" + summary)
    else:
        sys.stderr.write("\n" + summary)
    return EXIT_OK


def _drop_half_line(path: str) -> None:
    """Cut the half line an interrupted run may have left at the end of its rows
    file (ours, never an input), so that the rows appended after it, and the file
    as a whole, still parse; its item is simply done again."""
    try:
        with open(path, "r+b") as file:
            size = file.seek(0, os.SEEK_END)
            if not size:
                return
            file.seek(max(0, size - 1))
            if file.read(1) == b"\n":
                return
            # Back to the last newline, reading the tail in blocks (a row is short).
            end = size
            while end > 0:
                start = max(0, end - 65536)
                file.seek(start)
                block = file.read(end - start)
                cut = block.rfind(b"\n")
                if cut >= 0:
                    file.truncate(start + cut + 1)
                    return
                end = start
            file.truncate(0)
    except OSError as error:
        raise InputError(f"{path}: cannot write: {error.strerror or error}") from None


def _read_text(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    if os.path.isdir(path):
        raise InputError(f"{path}: is a directory, not a console log")
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_LOG_BYTES + 1)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except OSError as error:
        raise InputError(f"{path}: cannot read: {error.strerror or error}") from None
    if not data.strip():
        raise InputError(f"{path}: empty file, not a console log")
    if len(data) > MAX_LOG_BYTES:
        raise InputError(f"{path}: larger than {MAX_LOG_BYTES >> 20} MiB, not a console log")
    if _looks_binary(data):
        raise InputError(f"{path}: binary data, not a console log"
                         + (" (a dump? use: dfforensics VMCORE VMLINUX)" if _looks_like_dump(data) else ""))
    return data.decode("utf-8", errors="replace")


def _looks_like_dump(data: bytes) -> bool:
    from dfforensics.inputs.formats import dump_kind

    # Any ELF file, not only a core: a vmlinux given as a log is a dump mix-up too.
    return data[:4] == b"\x7fELF" or dump_kind(data) is not None


def _looks_binary(data: bytes) -> bool:
    from dfforensics.logs.logbytes import looks_binary

    return looks_binary(data)


def _write(text: str, output: Optional[str]) -> None:
    if output is None:
        _write_stdout(text)
        return
    try:
        with open(output, "w") as file:
            file.write(text)
    except OSError as error:
        raise InputError(f"{output}: cannot write: {error.strerror or error}") from None


def _write_stdout(text: str) -> None:
    """Write and flush now: a full disk must be this command's error line, not a
    traceback when the process ends and flushes."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        raise
    except OSError as error:
        raise InputError(f"stdout: cannot write: {error.strerror or error}") from None


def _render(reports: list, fmt: str) -> str:
    from dfforensics.core.render import render_many

    return render_many(reports, fmt)


def _quiet_drgn_logging() -> None:
    """drgn logs what it cannot load (modules, debug info) on stderr; the command
    reports what matters in its own output and keeps stderr for one error line."""
    import logging

    logging.getLogger("drgn").setLevel(logging.CRITICAL)


def _run_cache(argv: Sequence[str]) -> int:
    from dfforensics.inputs import formats

    parser = _Parser(prog="dfforensics cache",
                     description="The cache of decompressed and reassembled inputs "
                                 "($DFFORENSICS_CACHE, else ~/.cache/dfforensics), kept to "
                                 "$DFFORENSICS_CACHE_MAX bytes on disk (default 20G), the entries "
                                 "used longest ago removed first.")
    parser.add_argument("action", nargs="?", choices=("show", "clear"), default="show")
    args = parser.parse_args(argv)
    directory = formats.cache_dir()
    if args.action == "clear":
        count, size = formats.clear_cache(directory)
        _write_stdout(f"{directory}: removed {count} entries, {size >> 20} MiB\n")
    else:
        entries = formats.cache_entries(directory)
        _write_stdout(f"{directory}: {len(entries)} entries, "
                      f"{sum(e.disk_bytes for e in entries) >> 20} MiB on disk\n")
    return EXIT_OK


def _run_log(argv: Sequence[str]) -> int:
    from dfforensics.logs.analysis import analyze_log_text

    args = _log_parser().parse_args(argv)
    reports = [analyze_log_text(_read_text(path), path, args.environment) for path in args.files]
    return _finish(reports, args)


def _run_vmcore(argv: Sequence[str]) -> int:
    args = _vmcore_parser().parse_args(argv)
    try:
        from dfforensics.dump.analysis import analyze_vmcore_files
    except ImportError as error:  # pragma: no cover - only without drgn
        raise InputError(f"the dump analysis needs drgn: {error}") from None
    _check_dump_arguments(args)
    report = analyze_vmcore_files(args.vmcore, args.vmlinux, args.module_debuginfo, btf=args.btf)
    return _finish([report], args)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; return the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        # The usage, then the one error line every usage error ends in.
        sys.stderr.write(USAGE + "dfforensics: error: give a dump and its vmlinux, or a command\n")
        return EXIT_INPUT_ERROR
    if argv[0] in ("--version", "-V"):
        from dfforensics.core.version import __version__

        _write_stdout(f"dfforensics {__version__}\n")
        return EXIT_OK
    if argv[0] in ("-h", "--help") and len(argv) == 1:
        _write_stdout(USAGE)
        return EXIT_OK
    try:
        if argv and argv[0] == "log":
            return _run_log(argv[1:])
        if argv[0] == "cache":
            return _run_cache(argv[1:])
        skip_drgn_plugins()
        if argv and argv[0] == "triage":
            return _run_triage(argv[1:])
        _quiet_drgn_logging()
        if argv and argv[0] == "sweep":
            return _run_sweep(argv[1:])
        return _run_vmcore(argv)
    except InputError as error:
        sys.stderr.write(f"dfforensics: error: {error}\n")
        return EXIT_INPUT_ERROR
    except KeyboardInterrupt:
        sys.stderr.write("dfforensics: error: interrupted\n")
        return 130
    except BrokenPipeError:
        return EXIT_OK


def run() -> NoReturn:
    """The ``dfforensics`` command: :func:`main`, then exit without interpreter teardown."""
    import_drgn_helpers_on_demand()
    exit_without_teardown(main())


if __name__ == "__main__":
    run()
