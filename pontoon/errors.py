"""Errors that reach users.

Every error raised on purpose is a PontoonError carrying a one-line message
and the HTTP status the API answers with; anything else is a bug and is
reported as an internal error.
"""


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
