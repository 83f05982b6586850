"""The one exception for inputs the tool cannot use."""

__all__ = ("InputError",)


class InputError(Exception):
    """An input the tool cannot use; the message is shown to the user as one line."""
