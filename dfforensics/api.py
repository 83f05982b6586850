"""
Python API
----------

For scripts and the drgn REPL::

    >>> from dfforensics import analyze, render, scan_frames
    >>> report = analyze(prog)
    >>> print(report)            # the verdict line
    >>> print(render(report))    # the whole table, as the command prints it
    >>> report.verdict
    <Verdict.MATCH: 'match'>
    >>> for frame in scan_frames(prog, 0x7ffd7357a000, 0x7ffd7357b000, task=find_task(prog, 33)):
    ...     print(hex(frame.address), frame.kind)
"""

from typing import Iterator, Optional

from drgn import Object, Program

from dfforensics.core import kernel_facts, x86
from dfforensics.core.model import Frame, StackKind
from dfforensics.core.render import render
from dfforensics.core.signature import proves_cpl0_delivery
from dfforensics.dump.analysis import analyze
from dfforensics.dump.context import kernel_version
from dfforensics.dump.stackscan import named, scan_kernel_range, scan_user_range, symbolizer

__all__ = ("analyze", "render", "scan_frames")


def scan_frames(
    prog: Program,
    start: int,
    end: int,
    task: Optional[Object] = None,
    include_inconsistent: bool = False,
) -> Iterator[Frame]:
    """Yield the interrupt and exception frames found in ``[start, end)``.

    User addresses are read through ``task``'s page tables (a ``struct
    task_struct *``), which is then required; kernel addresses are read
    directly. Missing pages are skipped. Each frame's RIP is symbolized.
    Supports x86_64 kernels of every era (see :mod:`dfforensics.core.kernel_facts`).

    :param include_inconsistent: also yield valid frames on user stacks whose
        saved RSP does not point just above them (never proof of anything).
    :raises ValueError: for a user range without a task.
    """
    start &= ~7
    encoding = kernel_facts.value_for(kernel_facts.ORIG_AX_ENCODING, kernel_version(prog))
    if x86.is_user_address(start):
        if task is None:
            raise ValueError("reading user memory needs the task whose address space it is")
        read = scan_user_range(task, start, end, "user range", encoding)
    else:
        read = scan_kernel_range(prog, start, end, "kernel range", encoding)
    name = symbolizer(prog, task)
    for frame in read.frames:
        # Whole pages are read; only frames inside the asked range count.
        if not start <= frame.address < end:
            continue
        if frame.stack is StackKind.USER and not (proves_cpl0_delivery(frame) or include_inconsistent):
            continue
        yield named(frame, name)
