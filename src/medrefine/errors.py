"""Exception hierarchy.

Every error a user can cause (bad file, bad option, bad config) is a ``MedrefineError``;
the CLI turns it into one line on stderr and exit code 2, the web UI into ``gr.Error``.
"""

from __future__ import annotations


class MedrefineError(Exception):
    """Base class for errors caused by input, configuration or environment, not by a bug."""


class InputError(MedrefineError):
    """An input file or array is missing, corrupt, empty or has an unusable shape/dtype."""


class UnsupportedFormatError(InputError):
    """The file is readable but its format (or a variant of it) is not supported."""


class ConfigError(MedrefineError):
    """A configuration value or command-line option is invalid."""
