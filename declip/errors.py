"""Errors shared by every layer."""


class UserFacingError(RuntimeError):
    """An error whose message tells the user what to do; the CLI prints it without a traceback."""
