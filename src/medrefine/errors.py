"""Exception hierarchy.

Every error a user can cause (bad file, bad option, bad config) is a ``MedrefineError``;
the CLI turns it into one line on stderr and exit code 2, the web UI into ``gr.Error``.
"""

from __future__ import annotations


class MedrefineError(Exception):
    """Base class for errors caused by input, configuration or environment, not by a bug."""


class InputError(MedrefineError):
    """An input file or array is missing, corrupt, empty or has an unusable shape/dtype.

    The message is kept to one line (library errors quoted in it often span several), since
    the CLI prints it as one line and a batch report stores it in one cell."""

    def __init__(self, message: object = "", *args: object) -> None:
        super().__init__(" ".join(str(message).split()), *args)


class UnsupportedFormatError(InputError):
    """The file is readable but its format (or a variant of it) is not supported."""


class ConfigError(MedrefineError):
    """A configuration value or command-line option is invalid."""


class OutputError(ConfigError):
    """``-o`` cannot take this run's outputs: one would replace a file the run reads, the
    folder cannot be written, or another run is writing into it."""
