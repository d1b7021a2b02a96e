"""The one exception family of attrimp.

Every error a *user* can cause (a bad file, a missing column, a config typo) is raised as an
`AttrimpError` whose message is one complete sentence naming the file, column or value. The CLI
turns it into that sentence on stderr and exit code 2; anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations


class AttrimpError(Exception):
    """A user-facing error: one sentence that names the offending file, column or value."""

    exit_code = 2


class SchemaError(AttrimpError):
    """An attribute schema (built-in or TOML) or an annotation that does not fit it."""


class DataError(AttrimpError):
    """A dataset folder, image, manifest or annotation file that cannot be used as given."""


class ConfigError(AttrimpError):
    """A study / training configuration that is invalid."""


class CheckpointError(AttrimpError):
    """A checkpoint or weight file that cannot be loaded into the model asked for."""
