"""Errors that reach users.

Every error raised on purpose is a PontoonError carrying a one-line message
and the HTTP status the API answers with; anything else is a bug and is
reported as an internal error.
"""

import errno
import os


class PontoonError(Exception):
    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(PontoonError):
    status = 400


class NotFound(PontoonError):
    status = 404


class Conflict(PontoonError):
    status = 409


class Unavailable(PontoonError):
    """A dependency (the cluster store, the kernel) cannot serve the request now."""

    status = 503


def os_error_text(exc: BaseException) -> str:
    """An OSError or pyroute2 NetlinkError as words ("network is unreachable
    (ENETUNREACH)"), never the raw (errno, text) tuple."""
    code = getattr(exc, "errno", None) or getattr(exc, "code", None)
    if not isinstance(code, int) or not code:
        return str(exc) or type(exc).__name__
    text = os.strerror(code).lower()
    name = errno.errorcode.get(code)
    filename = getattr(exc, "filename", None)
    where = f": {filename}" if filename else ""
    return f"{text}{where}" + (f" ({name})" if name else "")
