"""The exceptions for inputs the tool cannot use."""

__all__ = ("DumpError", "InputError")


class InputError(Exception):
    """An input the tool cannot use; the message is shown to the user as one line."""


class DumpError(InputError):
    """A dump or debug-info file the analysis cannot use."""
