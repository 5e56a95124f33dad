"""fastdit's error types: one hierarchy, mapped once to CLI exit codes (and HTTP statuses).

```
FastditError
  UserError (also a ValueError)     bad input a user can fix            exit 2, HTTP 400
    InputError                      request values: sizes, frames, steps, image, ...
      ImageError                    an image that cannot be read or used
      CacheError                    a step-cache setting, table or calibration file
      ResourceError                 a request too large for the device (estimate), or out of memory
    ModelFolderError                a model folder or its configuration
      CheckpointError               weight files: missing, extra or mis-shaped tensors
    DeviceError                     a device or dtype this machine cannot run
    ConfigError                     a bad FASTDIT_* value
    LoraError                       LoRA files: unknown keys, ranks, shapes, model size
  OutputError (also an OSError)     a video or frames could not be written exit 2
  ProviderError (also RuntimeError) a requested op provider cannot run  exit 2
  Cancelled                         a generation stopped by its control  exit 130
Terminated (a KeyboardInterrupt)    SIGTERM / SIGHUP while the CLI runs  exit 128 + signal (143)
```

Loader code wraps only I/O and format errors into these types, so a bug keeps its traceback.
:func:`as_fastdit_error` turns the foreign exceptions a user can cause (running out of memory)
into these types, so the CLI prints them as one line.
"""

from __future__ import annotations

import re


class FastditError(Exception):
    """Base of every error fastdit raises on purpose."""


class UserError(FastditError, ValueError):
    """A problem with the user's input (arguments, files, settings): one line, exit code 2."""


class InputError(UserError):
    """A generation request that cannot be honoured (size, frames, steps, guidance, image).

    ``field``: the :class:`~fastdit.pipelines.request.GenerationRequest` keyword the error is
    about (``"height"``, ``"num_inference_steps"``, ``"image"``, ...), or None for the request
    as a whole; the server names the API field from it.
    """

    field: str | None = None

    def __init__(self, *args: object, field: str | None = None) -> None:
        super().__init__(*args)
        if field is not None:
            self.field = field


class ImageError(InputError):
    """An image that cannot be read or used (unreadable file, empty, too large, bad values)."""

    field = "image"


class CacheError(InputError):
    """A step-cache setting that cannot be used: policy, knobs, tables, calibration files."""

    field = "cache"


class ResourceError(InputError):
    """A request that does not fit the device: refused by the estimate, or out of memory."""


class ModelFolderError(UserError):
    """The model folder is missing, unreadable, not a Wan model, or holds corrupt files."""


class CheckpointError(ModelFolderError):
    """A checkpoint that cannot be loaded (bad files, missing, extra or mis-shaped tensors)."""


class DeviceError(UserError):
    """A device that does not exist or is not available here, or a dtype it cannot run."""


class ConfigError(UserError):
    """A bad value in fastdit's configuration (a ``FASTDIT_*`` environment variable)."""


class OutputError(FastditError, OSError):
    """A video or frame folder could not be written (encoder failure, full disk, cannot replace).

    Nothing is left under the output's name when this is raised: an existing file is untouched.
    """


class LoraError(UserError):
    """A LoRA file cannot be applied: unknown keys, mismatched ranks or shapes, a LoRA made for
    another model size, a damaged file. Raised before any weight is changed."""


class ProviderError(FastditError, RuntimeError):
    """A provider was required (strict mode or by name) but cannot run the call."""


class Cancelled(FastditError):
    """A generation was cancelled through its :class:`~fastdit.pipelines.control.GenerationControl`."""


class Terminated(KeyboardInterrupt):
    """The process got a termination signal (SIGTERM, SIGHUP) while the CLI (or a video write)
    ran; raised from the signal handler so every ``finally`` / ``except BaseException`` cleanup
    runs, like Ctrl-C's KeyboardInterrupt. Exit code ``128 + signum`` (143 for SIGTERM)."""

    def __init__(self, signum: int = 15) -> None:
        super().__init__(f"terminated by signal {signum}")
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


#: Exit codes of the command line, by error type (the first matching class wins).
EXIT_CODES: tuple[tuple[type[BaseException], int], ...] = (
    (UserError, 2),
    (OutputError, 2),
    (ProviderError, 2),
    (Cancelled, 130),
    (KeyboardInterrupt, 130),
)
EXIT_INTERNAL = 1

OUT_OF_MEMORY_HINT = ("try a smaller --height/--width/--num-frames, --offload model, or --vae-tiling")
_ALLOCATOR_WORDS = ("out of memory", "can't allocate memory", "cannot allocate memory")


def exit_code(exc: BaseException) -> int:
    """The CLI exit code for ``exc`` (1 for anything that is not a known fastdit error)."""
    if isinstance(exc, Terminated):
        return exc.exit_code
    for cls, code in EXIT_CODES:
        if isinstance(exc, cls):
            return code
    return EXIT_INTERNAL


def first_line(exc: BaseException) -> str:
    """An exception's message, first line only (its type name when it has none)."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def is_out_of_memory(exc: BaseException) -> bool:
    """``torch.OutOfMemoryError``, ``MemoryError``, or an allocator's ``RuntimeError``
    ("DefaultCPUAllocator: can't allocate memory", "CUDA out of memory", HIP's and others')."""
    if isinstance(exc, MemoryError):
        return True
    if type(exc).__name__ == "OutOfMemoryError":  # torch.OutOfMemoryError, without importing torch
        return True
    return isinstance(exc, RuntimeError) and any(w in str(exc).lower() for w in _ALLOCATOR_WORDS)


def as_fastdit_error(exc: BaseException) -> BaseException:
    """``exc`` itself, or the fastdit error it stands for: running out of memory becomes a
    :class:`ResourceError` whose one line says how much was asked for and what to try."""
    if isinstance(exc, FastditError) or not is_out_of_memory(exc):
        return exc
    detail = _allocation_detail(str(exc))
    return ResourceError(f"out of memory{detail}; {OUT_OF_MEMORY_HINT}")


def _allocation_detail(message: str) -> str:
    """' (tried to allocate 97.66 GiB)' from an allocator's message, when it says."""
    match = re.search(r"(?:tried to allocate|allocate) (\d+(?:\.\d+)?) ?(bytes|[KMGT]i?B)", message)
    if not match:
        return ""
    number, unit = float(match.group(1)), match.group(2)
    if unit == "bytes":
        return f" (tried to allocate {number / 2**30:.2f} GiB)" if number >= 2**20 else \
            f" (tried to allocate {int(number)} bytes)"
    return f" (tried to allocate {match.group(1)} {unit})"
