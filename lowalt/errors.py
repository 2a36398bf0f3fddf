"""The error family: every failure lowalt reports is one of these."""

from __future__ import annotations


class LowaltError(Exception):
    """Root of every error lowalt raises on purpose."""


class DecodeError(LowaltError):
    """Bytes that cannot be decoded in the stated format."""

    def __init__(self, fmt: str, offset: int, reason: str) -> None:
        super().__init__(f"{fmt} at byte {offset}: {reason}")
        self.fmt, self.offset, self.reason = fmt, offset, reason


class ValidationError(LowaltError):
    """A decoded value that breaks a rule; `field` names where."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field, self.reason = field, reason


class ConfigError(LowaltError):
    """Bad settings, reported at start-up in one line (exit status 2)."""


class ListenError(LowaltError):
    """A port lowalt was told to listen on cannot be bound (in use, not permitted)."""


class StorageUnavailable(LowaltError):
    """The database cannot be reached or refused a write; nothing was acknowledged."""


class AuthError(LowaltError):
    """A missing, wrong or insufficient credential; `status` is the HTTP answer."""

    def __init__(self, reason: str, status: int = 401) -> None:
        super().__init__(reason)
        self.reason, self.status = reason, status
