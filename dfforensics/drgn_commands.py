"""
drgn commands
-------------

Loaded by drgn through the ``drgn.plugins`` entry point: in ``drgn -c VMCORE
-s VMLINUX`` the commands ``%doublefault`` (the whole analysis, the same code
path as the ``dfforensics`` command) and ``%dfframes`` (a frame search on any
stack, which drgn's ``bt`` lacks) exist.
"""

import argparse
from typing import Any

import drgn
from drgn import Program
from drgn.commands import CommandError, argument, command, mutually_exclusive_group

from dfforensics.core.model import OUTPUT_FORMATS

# drgn imports this module in every session it starts (and in every program a script
# creates), so it imports only what registering the commands needs; the analysis
# modules (about 0.1 s of imports) load when a command first runs.

__all__ = ("drgn_prog_set",)


def drgn_prog_set(prog: Program) -> None:
    """drgn plugin hook: importing this module registered the commands."""


def _is_kernel(prog: Program) -> bool:
    return bool(prog.flags & drgn.ProgramFlags.IS_LINUX_KERNEL)


# drgn makes command parsers without -h/--help; every command of ours takes it.
_HELP = argument("-h", "--help", action="store_true", help="show this help and do nothing else")


def _printed_help(args: argparse.Namespace, kwargs: dict) -> bool:
    """Print the command's help when asked; drgn hands each command its parser."""
    if not args.help:
        return False
    parser = kwargs.get("parser")
    print(parser.format_help().rstrip() if parser is not None else "no help available")
    return True


@command(
    description="is this crash the hypervisor's CPL-corruption double fault?",
    long_description="Find every double fault in the program, recover the registers the CPU "
                     "saved, classify the saved RSP, scan the stacks for frames pushed without "
                     "a stack switch, and give the verdict with its evidence. The same analysis "
                     "as the 'dfforensics VMCORE VMLINUX' command.",
    arguments=(
        argument("--format", choices=sorted(OUTPUT_FORMATS), default="table", help="output format"),
        _HELP,
    ),
    enabled=_is_kernel,
)
def _cmd_doublefault(prog: Program, name: str, args: argparse.Namespace, **kwargs: Any) -> Any:
    if _printed_help(args, kwargs):
        return None
    return _print_analysis(prog, args.format, sweep=None)


def _print_analysis(prog: Program, fmt: str, sweep: Any) -> Any:
    """The one code path of %doublefault and %dfsweep (and of the dfforensics command)."""
    from dfforensics import api
    from dfforensics.core.render import render

    report = api.analyze(prog, {"kind": "program", "path": "drgn session"}, sweep=sweep)
    print(render(report, fmt), end="")
    return report


def _frame_rows(frames):
    return [[f"{f.address:016x}", f.stack.value, f.kind.value, "-" if f.vector is None else f"{f.vector:#04x}",
             f"{f.rip:016x}", f.rip_symbol or "", f"{f.cs:#04x}", f"{f.rflags:#x}",
             f"{f.rsp:016x}", f"{f.ss:#04x}", "yes" if f.consistent else "no"] for f in frames]


_HEADERS = ["address", "stack", "kind", "vector", "RIP", "symbol", "CS", "RFLAGS", "RSP", "SS",
            "consistent"]


def _task_ranges(prog: Program, task, want_user: bool, want_kernel: bool):
    from drgn.helpers.linux.mm import vma_find

    from dfforensics.core.model import RegionKind
    from dfforensics.dump.rspregion import kernel_stacks, user_stack_pointer
    from dfforensics.dump.stackscan import bounded_window

    ranges = []
    if want_user and task.mm:
        sp = user_stack_pointer(task)
        vma = vma_find(task.mm, sp) if sp is not None else None
        if vma:
            low, high = bounded_window(int(vma.vm_start), int(vma.vm_end), sp)
            ranges.append((low, high, task))
    if want_kernel:
        for stack in kernel_stacks(task, None, prog):
            if stack.kind is RegionKind.KERNEL_TASK_STACK:
                ranges.append((stack.start, stack.end, task))
    return ranges


@command(
    description="search a stack for interrupt and exception frames",
    long_description="Like crash's 'bt -e', on user stacks too: a task's user stack (around its "
                     "saved user RSP), its kernel stack, a CPU's IRQ and exception (IST) stacks, "
                     "or any address range. Frames on user stacks are shown when they are "
                     "self-consistent (pushed without a stack switch) unless --all is given.",
    arguments=(
        argument("address", nargs="?", type="hexadecimal",
                 help="start of a range to search; a user address needs -p PID, whose page "
                      "tables it is read through"),
        argument("length", nargs="?", type="hexadecimal", default=0x1000,
                 help="length of the range (default 0x1000)"),
        mutually_exclusive_group(
            argument("-p", "--pid", type=int, help="a task's stacks (user range: its address space)"),
            argument("-c", "--cpu", type=int, help="a CPU's IRQ and exception stacks"),
        ),
        mutually_exclusive_group(
            argument("--user", action="store_true", help="only user stacks"),
            argument("--kernel", action="store_true", help="only kernel stacks"),
        ),
        argument("--all", action="store_true", help="also frames whose saved RSP is elsewhere"),
        _HELP,
    ),
    enabled=_is_kernel,
)
def _cmd_dfframes(prog: Program, name: str, args: argparse.Namespace, **kwargs: Any) -> Any:
    if _printed_help(args, kwargs):
        return None
    from drgn.helpers.linux.pid import find_task
    from drgn.helpers.linux.sched import cpu_curr
    from tabulate import tabulate

    from dfforensics import api
    from dfforensics.core.model import RegionKind
    from dfforensics.dump.rspregion import kernel_stacks
    from dfforensics.dump.stackscan import USER_SCAN_LIMIT

    task = None
    if args.pid is not None:
        task = find_task(prog, args.pid)
        if not task:
            raise CommandError(f"no task with PID {args.pid}")
    want_user, want_kernel = not args.kernel, not args.user
    if args.address is not None:
        if args.length > USER_SCAN_LIMIT:
            raise CommandError(f"length is limited to {USER_SCAN_LIMIT:#x}")
        ranges = [(args.address, args.address + args.length, task)]
    elif task is not None:
        ranges = _task_ranges(prog, task, want_user, want_kernel)
    elif args.cpu is not None:
        current = cpu_curr(prog, args.cpu)
        ranges = [(stack.start, stack.end, current) for stack in kernel_stacks(current, args.cpu, prog)
                  if stack.kind in (RegionKind.IRQ_STACK, RegionKind.EXCEPTION_STACK)]
    else:
        raise CommandError("give an ADDRESS, -p PID or -c CPU")
    frames = []
    for start, end, owner in ranges:
        try:
            frames.extend(api.scan_frames(prog, start, end, task=owner, include_inconsistent=args.all))
        except ValueError as error:
            raise CommandError(f"{error}: add -p PID") from None
    if frames:
        print(tabulate(_frame_rows(frames), headers=_HEADERS))
    else:
        print("no frames found in " + ", ".join(f"{s:#x}-{e:#x}" for s, e, _ in ranges))
    return frames


@command(
    description="scan every task's user stack for frames pushed at CPL 0",
    long_description="The sweep of 'dfforensics sweep': every thread's user stack mapping "
                     "(bounded per task), read through its page tables, searched for frames "
                     "pushed without a stack switch. Works on dumps and on the live kernel.",
    arguments=(
        argument("--format", choices=sorted(OUTPUT_FORMATS), default="table", help="output format"),
        _HELP,
    ),
    enabled=_is_kernel,
)
def _cmd_dfsweep(prog: Program, name: str, args: argparse.Namespace, **kwargs: Any) -> Any:
    if _printed_help(args, kwargs):
        return None
    return _print_analysis(prog, args.format, sweep=True)
