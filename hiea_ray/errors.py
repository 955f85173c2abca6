"""User-facing errors.

A ``UserError`` is a mistake in the user's input (a file, a line, a config field). The CLI prints
its message and exits with status 2, without a traceback. Anything else is a bug and keeps its
traceback.
"""


class UserError(Exception):
    """Bad input: the message names the file and line, or the config field."""


def line_error(path, lineno: int, message: str) -> UserError:
    return UserError(f"{path}:{lineno}: {message}")


class Terminated(KeyboardInterrupt):
    """SIGTERM (what cluster schedulers and `kill` send), ended like Ctrl-C."""


# set by the SIGTERM / SIGINT handlers: an exception raised from a signal handler is lost when the
# signal lands inside a finalizer (a weakref callback, __del__); ``check_terminated`` raises it again
_TERM_SEEN: list[bool] = []
_INT_SEEN: list[bool] = []


def handle_signals() -> None:
    """Turn SIGTERM into ``Terminated`` and SIGINT into ``KeyboardInterrupt`` in the main thread,
    remembering both (re-installed after ``ray.init``, which sets its own handler)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return

    def _raise(signum, frame):
        _TERM_SEEN.append(True)
        raise Terminated()

    def _interrupt(signum, frame):
        _INT_SEEN.append(True)
        raise KeyboardInterrupt()

    import sys

    if not getattr(sys.unraisablehook, "_hiea", False):
        default = sys.unraisablehook

        def _quiet(unraisable):  # a signal's exception swallowed by a finalizer: no "Exception ignored" traceback
            if not isinstance(unraisable.exc_value, KeyboardInterrupt):
                default(unraisable)

        _quiet._hiea = True
        sys.unraisablehook = _quiet

    signal.signal(signal.SIGTERM, _raise)
    current = signal.getsignal(signal.SIGINT)
    if current is signal.default_int_handler or getattr(current, "_hiea", False):  # not over a caller's own
        _interrupt._hiea = True
        signal.signal(signal.SIGINT, _interrupt)


def check_terminated() -> None:
    """Raise ``Terminated`` / ``KeyboardInterrupt`` if a SIGTERM / SIGINT arrived whose exception may
    have been swallowed (see ``_TERM_SEEN``); the pipeline calls it between stages and at the end."""
    if _TERM_SEEN:
        raise Terminated()
    if _INT_SEEN:
        raise KeyboardInterrupt()


# errno values of file-system trouble a user can fix (permissions, a full or read-only disk).
_FS_ERRNOS = {"EACCES", "EPERM", "EROFS", "ENOSPC", "EDQUOT", "EFBIG", "EMFILE", "ENAMETOOLONG", "ENOTDIR", "EISDIR"}


def file_system_error(exc: BaseException) -> OSError | None:
    """The OSError of file-system trouble behind an exception (its cause chain, or the cause a Ray
    task error carries), or None."""
    import errno

    codes = {getattr(errno, n) for n in _FS_ERRNOS if hasattr(errno, n)}
    seen = set()
    todo = [exc]
    found = None
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in codes and (found is None or (_path(e) and not _path(found))):
            found = e  # the innermost one that names a file, else the first
        todo += [getattr(e, "cause", None), e.__cause__, e.__context__]
    return found


def _path(e: OSError) -> bool:
    return isinstance(e.filename, str) and "\n" not in e.filename and "/" in e.filename


def describe_file_system_error(e: OSError, where: str | None = None) -> str:
    """One line: the file (or the folder being written, ``where``) and the OS's words for the error."""
    import os

    place = e.filename if _path(e) else where  # Ray's wrapped errors carry a message in filename
    return f"{place}: {os.strerror(e.errno)}" if place else os.strerror(e.errno)
