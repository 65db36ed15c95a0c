"""One error hierarchy for every stage; only the CLI turns these into messages and exit codes."""

from __future__ import annotations


class ScanError(Exception):
    """A failure the user can act on. `hint` is an optional second sentence saying how."""

    exit_code = 3

    def __init__(self, message: str, hint: str | None = None, detail: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.detail = detail
        """Extra lines shown after the message, e.g. the last log lines of a failed container."""

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class UsageError(ScanError):
    """Bad input from the user: unknown image, malformed whitelist, bad option."""

    exit_code = 2


class DockerError(ScanError):
    """The Docker engine failed or could not be reached."""


class ClairError(ScanError):
    """Clair failed, answered with an error, or did not answer in time."""


class LayerDigestMismatch(ClairError):
    """Clair v4 downloaded a layer whose bytes do not hash to the digest it was given."""


class UnsupportedMediaType(ClairError):
    """Clair v4 refused a layer's Content-Type, or could not agree on one with us."""


class IndexFailed(ClairError):
    """Clair v4 ended indexing an image in its IndexError state."""


class BackendError(ScanError):
    """The local Clair/PostgreSQL containers could not be brought up or inspected."""


class FileSystemError(ScanError):
    """Reading or writing local files failed (disk full, permissions)."""


def first_line(exc: BaseException) -> str:
    """An exception as one line: library messages (docker, psycopg) often run to several."""
    explanation = getattr(exc, "explanation", None)  # docker's APIError keeps the engine's words here
    lines = str(explanation or exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


class ImageNotFound(UsageError):
    """The engine or registry has no image by that name."""


class RegistryError(ScanError):
    """A registry failed, could not be reached, or answered something unusable."""
