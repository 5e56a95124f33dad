"""fastdit's error types (seams.md section 1).

``UserError`` and its subclasses are bad input a user can fix (CLI exit code 2, HTTP 400);
they are ``ValueError`` subclasses so that callers catching ``ValueError`` keep working.
"""

from __future__ import annotations


class FastditError(Exception):
    """Base class of every error fastdit raises on purpose."""


class UserError(FastditError, ValueError):
    """Bad input a user can fix: CLI exit 2, HTTP 400."""


class InputError(UserError):
    """A request value (size, frames, steps, image, a file to compare, ...) is wrong."""


class ModelFolderError(UserError):
    """A model folder or its configuration is wrong."""


class CheckpointError(ModelFolderError):
    """Weight files: missing, extra or mis-shaped tensors."""


class LoraError(UserError):
    """A LoRA file or its application is wrong."""


class ProviderError(FastditError, RuntimeError):
    """A requested op provider cannot run."""


class Cancelled(FastditError):
    """A generation stopped by its control object."""
