"""The project store's errors. Every message says what was wrong and what is allowed; the
server maps them to HTTP statuses (InvalidInput 415/422, NotFound 404, VersionConflict and
LeaseConflict 409)."""

from __future__ import annotations

__all__ = ["InvalidInput", "LeaseConflict", "NotFound", "StoreError", "VersionConflict"]


class StoreError(Exception):
    """Base class of the project store's errors."""


class InvalidInput(StoreError, ValueError):
    """Bad input: not an image, a decompression bomb, a bad file name, a malformed RLE, an
    unknown status or source, ... (a ValueError, so the CLI's ``bad_input()`` maps it to exit
    code 2)."""


class NotFound(StoreError, LookupError):
    """No such project, image, mask, annotator or model version."""


class VersionConflict(StoreError):
    """A mask was changed since the version the caller edits (``current`` is its version now)."""

    def __init__(self, message: str, *, current: int | None = None) -> None:
        super().__init__(message)
        self.current = current


class LeaseConflict(StoreError):
    """The image is leased to another annotator (``holder``) until ``expires_at``."""

    def __init__(self, message: str, *, holder: str, expires_at: object) -> None:
        super().__init__(message)
        self.holder = holder
        self.expires_at = expires_at
