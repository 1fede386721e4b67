"""One error hierarchy for the whole project.

Every error carries a message that says what went wrong and a hint that says how to fix it. The HTTP status
is a class attribute so the service can map any of these to a response in one handler; the CLI maps them to
exit code 2 with the message and hint on stderr (no traceback: these are the user's to fix, not bugs).
"""

from __future__ import annotations


class ErnieClsError(Exception):
    """Base class. ``str(err)`` is ``"<message> Hint: <hint>"``."""

    http_status: int = 500
    response_headers: tuple[tuple[str, str], ...] = ()  # extra HTTP headers of the reply (Retry-After, ...)

    def __init__(self, message: str, hint: str = "") -> None:
        self.message = message
        self.hint = hint
        super().__init__(f"{message} Hint: {hint}" if hint else message)


class UserInputError(ErnieClsError):
    """Something the caller gave us is wrong (a file, a flag, a request body)."""

    http_status = 422


class DataError(UserInputError):
    """A data file cannot be used as given (missing column, empty, one class, bad encoding...)."""


class ConfigError(UserInputError):
    """A flag or setting is invalid or contradicts another."""


class OutputExistsError(UserInputError):
    """Refusing to overwrite an existing output directory."""

    http_status = 409


class ModelLoadError(ErnieClsError):
    """A model or checkpoint cannot be loaded (missing files, offline hub name, wrong kind)."""

    http_status = 500


class ArtifactError(ErnieClsError):
    """The artifact is incomplete, tampered with, or from an unsupported schema."""

    http_status = 503
