"""fastdit's error types.

::

    FastditError(Exception)
      UserError(FastditError, ValueError)        # bad input a user can fix -> CLI exit 2, HTTP 400
        InputError(UserError)                    # request values (size, frames, steps, image, ...)
        ModelFolderError(UserError)              # model folder / config problems
          CheckpointError(ModelFolderError)      # weight files: missing/extra/mis-shaped tensors
        LoraError(UserError)                     # LoRA files: unknown keys, ranks, shapes, model size
      ProviderError(FastditError, RuntimeError)  # a requested op provider cannot run
      Cancelled(FastditError)                    # a generation stopped by its control object

Messages are one line and name what is wrong (the tensor, the file, the value).
"""

from __future__ import annotations


class FastditError(Exception):
    """Base of every error fastdit raises on purpose."""


class UserError(FastditError, ValueError):
    """Bad input that the user can fix (CLI exit code 2, HTTP 400)."""


class InputError(UserError):
    """A request value is out of range or of the wrong kind."""


class ModelFolderError(UserError):
    """A model folder or its configuration cannot be used."""


class CheckpointError(ModelFolderError):
    """A weight file is missing, corrupt, or holds missing, unexpected or mis-shaped tensors."""


class LoraError(UserError):
    """A LoRA file cannot be applied: unknown keys, mismatched ranks or shapes, a LoRA made for
    another model size, a damaged file. Raised before any weight is changed."""


class ProviderError(FastditError, RuntimeError):
    """A requested op provider cannot run here."""


class Cancelled(FastditError):
    """A generation was stopped through its control object."""
