"""fastdit's error types: one hierarchy, mapped once to CLI exit codes (and HTTP statuses).

```
FastditError
  UserError (also a ValueError)     bad input a user can fix            exit 2, HTTP 400
    InputError                      request values: sizes, frames, steps, image, ...
    ModelFolderError                a model folder or its configuration
      CheckpointError               weight files: missing, extra or mis-shaped tensors
    LoraError                       LoRA files: unknown keys, ranks, shapes, model size
  ProviderError (also RuntimeError) a requested op provider cannot run  exit 2
  Cancelled                         a generation stopped by its control  exit 130
```

Loader code wraps only I/O and format errors into these types, so a bug keeps its traceback.
"""

from __future__ import annotations


class FastditError(Exception):
    """Base of every error fastdit raises on purpose."""


class UserError(FastditError, ValueError):
    """A problem with the user's input (arguments, files, settings): one line, exit code 2."""


class InputError(UserError):
    """A generation request that cannot be honoured (size, frames, steps, guidance, image)."""


class ModelFolderError(UserError):
    """The model folder is missing, unreadable, not a Wan model, or holds corrupt files."""


class CheckpointError(ModelFolderError):
    """A transformer checkpoint that cannot be loaded (bad files, keys or shapes)."""


class LoraError(UserError):
    """A LoRA file cannot be applied: unknown keys, mismatched ranks or shapes, a LoRA made for
    another model size, a damaged file. Raised before any weight is changed."""


class ProviderError(FastditError, RuntimeError):
    """A provider was required (strict mode or by name) but cannot run the call."""


class Cancelled(FastditError):
    """A generation was cancelled through its :class:`~fastdit.pipelines.control.GenerationControl`."""


#: Exit codes of the command line, by error type (the first matching class wins).
EXIT_CODES: tuple[tuple[type[BaseException], int], ...] = (
    (UserError, 2),
    (ProviderError, 2),
    (Cancelled, 130),
    (KeyboardInterrupt, 130),
)
EXIT_INTERNAL = 1
EXIT_SIGTERM = 143


def exit_code(exc: BaseException) -> int:
    """The CLI exit code for ``exc`` (1 for anything that is not a known fastdit error)."""
    for cls, code in EXIT_CODES:
        if isinstance(exc, cls):
            return code
    return EXIT_INTERNAL


def first_line(exc: BaseException) -> str:
    """An exception's message, first line only (its type name when it has none)."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
