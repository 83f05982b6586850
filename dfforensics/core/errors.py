"""The exceptions for inputs the tool cannot use, and what kind of problem each is."""

from enum import Enum

__all__ = ("DumpError", "ErrorKind", "InputError")


class ErrorKind(str, Enum):
    """Why an input could not be used: the ``error_kind`` of a triage row.

    Set where the error is raised, by the code that knows what failed, so that
    no one downstream has to guess it from the message.
    """

    INPUT = "input"
    NOT_A_DUMP = "not-a-dump"
    CORRUPT_DUMP = "corrupt-dump"
    NO_VMCOREINFO = "no-vmcoreinfo"
    MISMATCH = "vmlinux-mismatch"
    DEBUGINFO = "debuginfo"
    NO_DEBUGINFO = "no-debuginfo"
    CACHE = "cache"
    MEMORY = "memory"
    TIMEOUT = "timeout"
    WORKER_CRASH = "worker-crash"
    INCOMPLETE = "incomplete"
    DUPLICATE = "duplicate"
    INTERRUPTED = "interrupted"


class InputError(Exception):
    """An input the tool cannot use; the message is shown to the user as one line."""

    def __init__(self, message: str, kind: ErrorKind = ErrorKind.INPUT) -> None:
        super().__init__(message)
        self.kind = kind


class DumpError(InputError):
    """A dump or debug-info file the analysis cannot use."""
