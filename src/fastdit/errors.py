"""fastdit's exception hierarchy.

``UserError`` is bad input a user can fix (CLI exit 2, HTTP 400); ``ProviderError`` a requested
op provider that cannot run; ``Cancelled`` a generation stopped by its control object.
"""

from __future__ import annotations


class FastditError(Exception):
    """Base of every error fastdit raises on purpose."""


class UserError(FastditError, ValueError):
    """Bad input a user can fix: CLI exit code 2, HTTP 400."""


class InputError(UserError):
    """Request values: size, frames, steps, image, ..."""


class ModelFolderError(UserError):
    """Model folder or config problems."""


class CheckpointError(ModelFolderError):
    """Weight files: missing, extra or mis-shaped tensors."""


class LoraError(UserError):
    """LoRA files and settings."""


class ProviderError(FastditError, RuntimeError):
    """A requested op provider cannot run."""


class Cancelled(FastditError):
    """A generation stopped by its control object."""
