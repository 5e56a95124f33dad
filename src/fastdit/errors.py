"""The exceptions fastdit raises for problems a user can cause or fix.

    FastditError(Exception)
      UserError(FastditError, ValueError)        bad input a user can fix -> CLI exit 2, HTTP 400
        InputError(UserError)                    request values (size, frames, steps, image, ...)
        ModelFolderError(UserError)              model folder / config problems
          CheckpointError(ModelFolderError)      weight files: missing/extra/mis-shaped tensors
        LoraError(UserError)
      ProviderError(FastditError, RuntimeError)  a requested op provider cannot run
      Cancelled(FastditError)                    a generation stopped by its control object
"""

from __future__ import annotations


class FastditError(Exception):
    """Base of every error fastdit raises on purpose."""


class UserError(FastditError, ValueError):
    """Bad input a user can fix (CLI exit code 2, HTTP 400)."""


class InputError(UserError):
    """A request value that cannot be honoured (size, frames, steps, guidance, image, ...)."""


class ModelFolderError(UserError):
    """The model folder is missing, unreadable, not a Wan model, or holds bad configs."""


class CheckpointError(ModelFolderError):
    """Weight files: missing, extra or mis-shaped tensors."""


class LoraError(UserError):
    """A LoRA file that cannot be read or applied."""


class ProviderError(FastditError, RuntimeError):
    """A requested op provider cannot run here."""


class Cancelled(FastditError):
    """A generation stopped by its control object (or a cancelled server job)."""


__all__ = ["FastditError", "UserError", "InputError", "ModelFolderError", "CheckpointError", "LoraError",
           "ProviderError", "Cancelled"]
