"""Errors a person can act on: each carries the config field (or file) it is about.

The CLI prints ``error: <field>: <message>`` on one line and exits with code 2 for
:class:`ConfigError` and :class:`DataError`; training failures exit with code 1.
"""

from __future__ import annotations


class AdaptrainError(Exception):
    """Base class: ``field`` names what the user must change (may be empty)."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}" if field else message)


class ConfigError(AdaptrainError):
    """A config value, preset name or command-line argument is invalid."""


class DataError(AdaptrainError):
    """A data set is missing, unreadable or too small for the request."""


class CheckpointError(AdaptrainError):
    """A checkpoint is missing, corrupt, or unsafe to load."""


class TrainingError(AdaptrainError):
    """Training cannot continue (e.g. a non-finite loss)."""
