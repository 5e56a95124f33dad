"""Reading the files of a model folder: JSON objects and safetensors files, one parser each.

Used by the model-folder inspection (``pipelines/spec.py``) and the checkpoint loader
(``models/wan/checkpoint.py``); each caller names the error type it raises
(:class:`~fastdit.errors.ModelFolderError` or its subclass
:class:`~fastdit.errors.CheckpointError`), the messages are the same.

A safetensors file is an 8-byte little-endian header length ``n``, ``n`` bytes of JSON
(``{name: {"dtype", "shape", "data_offsets": [start, stop]}, "__metadata__": {...}}``) and
the tensor bytes; :func:`read_safetensors_header` checks all of it without reading tensor data.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastdit.errors import ModelFolderError, first_line

#: bytes per element of the safetensors dtypes
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
               "U8": 1, "U16": 2, "U32": 4, "U64": 8, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
MAX_HEADER = 1 << 28  # the safetensors library's own limit is 100 MB


def read_json(path: Path, error: type[ModelFolderError] = ModelFolderError) -> dict[str, Any]:
    """The JSON object in ``path``; ``error`` (with the path in its message) if the file is
    missing, unreadable, not JSON or not an object."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise error(f"missing file {path}") from None
    except PermissionError:
        raise error(f"cannot read {path}: permission denied") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error(f"cannot parse {path}: {first_line(exc)}") from None
    if not isinstance(data, dict):
        raise error(f"cannot parse {path}: expected a JSON object")
    return data


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of a safetensors header: its dtype name (``"BF16"``), shape, element count,
    and where its bytes are (absolute ``start`` in the file, ``nbytes``)."""

    dtype: str
    shape: tuple[int, ...]
    numel: int
    start: int = 0
    nbytes: int = 0


def read_safetensors_header(path: Path, error: type[ModelFolderError] = ModelFolderError,
                            what: str = "corrupt weights file") -> dict[str, TensorEntry]:
    """``{tensor name: TensorEntry}`` from a safetensors file's header, checked against the
    file (each tensor's byte count against its shape and dtype, the file long enough for the
    last one); no tensor data is read. Problems raise ``error(f"{what} {path}: {problem}")``,
    an unreadable file ``error(f"cannot read weights file {path}: permission denied")``."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise error(f"{what} {path}: too short to be safetensors")
            (n,) = struct.unpack("<Q", head)
            if n <= 0 or n > min(size - 8, MAX_HEADER):
                raise error(f"{what} {path}: bad safetensors header")
            header = json.loads(f.read(n))
    except ModelFolderError:
        raise
    except PermissionError:
        raise error(f"cannot read weights file {path}: permission denied") from None
    except (OSError, ValueError) as exc:
        raise error(f"{what} {path}: {first_line(exc)}") from None
    entries, problem = _entries(header, n, size)
    if problem:
        raise error(f"{what} {path}: {problem}")
    return entries


def _entries(header: object, n: int, size: int) -> tuple[dict[str, TensorEntry], str | None]:
    if not isinstance(header, dict):
        return {}, "bad safetensors header"
    entries: dict[str, TensorEntry] = {}
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            start, stop = info["data_offsets"]
            shape = tuple(int(d) for d in info["shape"])
            numel = 1
            for d in shape:
                numel *= d
            nbytes = numel * DTYPE_BYTES.get(info["dtype"], 0)
        except (KeyError, TypeError, ValueError):
            return entries, f"bad header entry for tensor {name!r}"
        if nbytes and stop - start != nbytes:
            return entries, f"tensor {name!r} has {stop - start} bytes, its shape needs {nbytes}"
        end = max(end, stop)
        entries[name] = TensorEntry(str(info["dtype"]), shape, numel, 8 + n + start, stop - start)
    if 8 + n + end > size:
        return entries, f"file is truncated ({size} bytes, the header needs {8 + n + end})"
    return entries, None


def open_safetensors(path: Path, error: type[ModelFolderError] = ModelFolderError):
    """A ``safetensors.safe_open`` handle on ``path`` (CPU, torch tensors)."""
    from safetensors import safe_open

    try:
        return safe_open(str(path), framework="pt", device="cpu")
    except Exception as exc:  # safetensors raises its own error types for bad headers
        raise error(f"cannot read safetensors file {path}: {first_line(exc)}") from None
