"""User-facing errors.

A ``UserError`` is a mistake in the user's input (a file, a line, a config field). The CLI prints
its message and exits with status 2, without a traceback. Anything else is a bug and keeps its
traceback.
"""


class UserError(Exception):
    """Bad input: the message names the file and line, or the config field."""


def line_error(path, lineno: int, message: str) -> UserError:
    return UserError(f"{path}:{lineno}: {message}")
