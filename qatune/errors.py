"""User-facing errors.

Every error a user can cause (bad data, bad config, missing model, unwritable output) is a
:class:`QatuneError`. The CLI prints its message without a traceback (unless ``--debug``) and exits
non-zero, so messages must name the file/record/field and say what to do.
"""

from __future__ import annotations


class QatuneError(Exception):
    """Base class for errors caused by user input; the message is shown as-is."""

    exit_code = 2


class DataError(QatuneError):
    """Invalid or unreadable data (names the file, record and field)."""


class ConfigError(QatuneError):
    """Invalid configuration value, unknown method/option, bad override."""


class ModelError(QatuneError):
    """The model cannot be found or loaded."""


class OutputError(QatuneError):
    """The output location cannot be written."""
