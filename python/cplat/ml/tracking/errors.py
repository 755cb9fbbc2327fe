"""Errors of the tracking store, named by the error codes MLflow clients understand."""

from __future__ import annotations

__all__ = [
    "INVALID_PARAMETER_VALUE",
    "RESOURCE_ALREADY_EXISTS",
    "RESOURCE_DOES_NOT_EXIST",
    "TrackingError",
]

RESOURCE_DOES_NOT_EXIST = "RESOURCE_DOES_NOT_EXIST"
INVALID_PARAMETER_VALUE = "INVALID_PARAMETER_VALUE"
RESOURCE_ALREADY_EXISTS = "RESOURCE_ALREADY_EXISTS"


class TrackingError(Exception):
    """A request the tracking store refuses, with an MLflow error code.

    Parameters
    ----------
    code
        ``RESOURCE_DOES_NOT_EXIST``, ``INVALID_PARAMETER_VALUE`` or ``RESOURCE_ALREADY_EXISTS``.
    message
        What is wrong, for people.
    field
        The request field at fault, when there is one.
    """

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field


def not_found(what: str) -> TrackingError:
    """Return a ``RESOURCE_DOES_NOT_EXIST`` error for ``what``."""
    return TrackingError(RESOURCE_DOES_NOT_EXIST, f"{what} not found")


def invalid(message: str, field: str | None = None) -> TrackingError:
    """Return an ``INVALID_PARAMETER_VALUE`` error naming ``field``."""
    return TrackingError(INVALID_PARAMETER_VALUE, message, field)


def exists(message: str, field: str | None = None) -> TrackingError:
    """Return a ``RESOURCE_ALREADY_EXISTS`` error naming ``field``."""
    return TrackingError(RESOURCE_ALREADY_EXISTS, message, field)
