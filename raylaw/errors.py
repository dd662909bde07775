"""The one exception raylaw raises for bad input: its message names the file, field or flag."""


class RaylawError(ValueError):
    """Bad input or state; the message is one line a user can act on."""
