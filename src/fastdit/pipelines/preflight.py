"""Before loading: every component's checkpoint against the model its config builds.

:func:`check_components` builds each component (transformer(s), UMT5 text encoder, CLIP image
encoder, VAE) from its ``config.json`` on the meta device (no memory, no weights) and compares
its parameters' names and shapes with the safetensors headers of its weight files (no tensor
data is read). A missing or mis-shaped tensor is a :class:`~fastdit.errors.CheckpointError`
naming the component, the file and the tensor, raised before the first byte of weights loads:
the transformers library would otherwise fill a missing text-encoder tensor with random values
and only log it. Extra tensors are an error for fastdit's transformer (its loader refuses them)
and a warning for the library components (their loaders ignore them).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Iterable

import torch

from fastdit.errors import CheckpointError, ModelFolderError, first_line
from fastdit.pipelines.spec import ModelSpec

log = logging.getLogger("fastdit.pipelines")

# component -> the library that builds it (the class comes from model_index.json)
LIBRARY_COMPONENTS = ("text_encoder", "image_encoder", "vae")
SHOWN = 5  # tensors named in one message


def check_components(spec: ModelSpec) -> None:
    """Check every component's weights against its config (headers only); raises
    :class:`CheckpointError` / :class:`ModelFolderError`."""
    for name in ("transformer", "transformer_2"):
        if spec.components.get(name) is not None:
            check_transformer(spec, name)
    for name in LIBRARY_COMPONENTS:
        if spec.components.get(name) is not None:
            check_library_component(spec, name)


# ---------------------------------------------------------------------------------------
# Expected tensors of a model, and the comparison
# ---------------------------------------------------------------------------------------
def expected_tensors(model: torch.nn.Module) -> tuple[list[tuple[tuple[str, ...], tuple[int, ...]]],
                                                      dict[str, tuple[int, ...]]]:
    """The parameters of ``model`` as (names, shape) groups (tied parameters share a group: the
    checkpoint needs any one of the names), and its buffers (optional in a checkpoint)."""
    groups: dict[int, tuple[list[str], tuple[int, ...]]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(param), ([], tuple(param.shape)))[0].append(name)
    buffers = {name: tuple(b.shape) for name, b in model.named_buffers(remove_duplicate=False)}
    return [(tuple(names), shape) for names, shape in groups.values()], buffers


def compare(component: str, folder: Path, groups, buffers: dict[str, tuple[int, ...]],
            stored: dict[str, tuple[Path, tuple[int, ...]]], *, extra_is_error: bool,
            ignore_missing: Iterable[str] = ()) -> None:
    """Raise :class:`CheckpointError` for a missing or mis-shaped tensor (and an extra one when
    ``extra_is_error``; else log it)."""
    patterns = [re.compile(p) for p in ignore_missing]
    known: set[str] = set(buffers)
    missing: list[str] = []
    for names, shape in groups:
        known.update(names)
        present = [n for n in names if n in stored]
        if not present:
            if not any(p.search(n) for p in patterns for n in names):
                missing.append(names[0])
            continue
        file, got = stored[present[0]]
        if tuple(got) != shape:
            raise CheckpointError(f"cannot load {component} from {folder}: tensor {present[0]!r} in "
                                  f"{file.name} has shape {list(got)}, its config.json expects {list(shape)}")
    for name, shape in buffers.items():
        if name in stored and tuple(stored[name][1]) != shape:
            raise CheckpointError(f"cannot load {component} from {folder}: tensor {name!r} in "
                                  f"{stored[name][0].name} has shape {list(stored[name][1])}, its "
                                  f"config.json expects {list(shape)}")
    if missing:
        more = f" and {len(missing) - SHOWN} more" if len(missing) > SHOWN else ""
        files = ", ".join(sorted({f.name for f, _ in stored.values()}))
        raise CheckpointError(f"cannot load {component} from {folder}: its weights ({files}) lack "
                              f"tensor(s) {', '.join(repr(m) for m in missing[:SHOWN])}{more}")
    extra = sorted(k for k in stored if k not in known)
    if extra and extra_is_error:
        raise CheckpointError(f"cannot load {component} from {folder}: unexpected tensor {extra[0]!r} in "
                              f"{stored[extra[0]][0].name}: the model its config.json builds has no such "
                              "parameter")
    if extra:
        log.warning("%s: %d tensor(s) in %s that the model does not use (ignored), e.g. %r",
                    component, len(extra), folder, extra[0])


def stored_tensors(folder: Path) -> dict[str, tuple[Path, tuple[int, ...]]] | None:
    """``{name: (file, shape)}`` from the safetensors headers of a folder; None when it holds
    only pickled checkpoints (``.bin``), whose names cannot be read without loading them."""
    from fastdit.models.wan.checkpoint import index_tensors, weight_files

    if not any(folder.glob("*.safetensors")):
        return None
    files, _ = weight_files(folder)
    return index_tensors(files)


def _meta(build):
    with torch.device("meta"):
        return build()


# ---------------------------------------------------------------------------------------
# fastdit's transformer
# ---------------------------------------------------------------------------------------
def check_transformer(spec: ModelSpec, subfolder: str) -> None:
    """The transformer's config (WanConfig) and weights, as its loader will read them."""
    from fastdit.models.wan import WanTransformer
    from fastdit.models.wan.checkpoint import (IGNORED_KEYS, config_for_checkpoint, find_model_dir,
                                               original_to_diffusers_key, read_json)

    folder = spec.root / subfolder
    try:
        folder = find_model_dir(spec.root, subfolder)
        stored = stored_tensors(folder) or {}
        config_file = folder / "config.json"
        config, original = config_for_checkpoint(read_json(config_file), stored, config_file)
    except CheckpointError as exc:
        raise CheckpointError(f"cannot load {subfolder} from {folder}: {exc}") from None
    renamed: dict[str, tuple[Path, tuple[int, ...]]] = {}
    for key, value in stored.items():
        if IGNORED_KEYS.search(key):
            continue
        name = original_to_diffusers_key(key) if original else key
        renamed[name if name is not None else key] = value
    groups, buffers = expected_tensors(_meta(lambda: WanTransformer(config)))
    compare(subfolder, folder, groups, buffers, renamed, extra_is_error=True)


# ---------------------------------------------------------------------------------------
# transformers / diffusers components
# ---------------------------------------------------------------------------------------
def check_library_component(spec: ModelSpec, name: str) -> None:
    """A transformers or diffusers component (text encoder, image encoder, VAE)."""
    folder = spec.root / name
    stored = stored_tensors(folder)
    if stored is None:
        log.debug("%s: pickled weights in %s; their names are checked while loading", name, folder)
        return
    library, class_name = spec.components[name]
    try:
        model = _meta(lambda: build_library_model(library, class_name, folder))
    except (ModelFolderError, KeyboardInterrupt):
        raise
    except Exception as exc:  # a config the library cannot build: name the file
        raise ModelFolderError(f"cannot load {name} from {folder}: {folder / 'config.json'}: "
                               f"{first_line(exc)}") from None
    aligned = align_names(stored, model)
    if aligned is None:
        log.info("%s: the tensor names in %s do not map onto the model's; they are checked while "
                 "loading", name, folder)
        return
    ignore = list(getattr(model, "_keys_to_ignore_on_load_missing", None) or [])
    groups, buffers = expected_tensors(model)
    compare(name, folder, groups, buffers, aligned, extra_is_error=False, ignore_missing=ignore)


def build_library_model(library: str, class_name: str, folder: Path) -> torch.nn.Module:
    """The model class ``model_index.json`` names, built from ``folder/config.json`` (call it
    under ``torch.device("meta")``)."""
    import importlib

    if library not in ("transformers", "diffusers"):
        raise ModelFolderError(f"cannot load {folder.name} from {folder}: library {library!r} is not "
                               "supported (transformers or diffusers)")
    module = importlib.import_module(library)
    cls = getattr(module, class_name, None)
    if cls is None:
        raise ModelFolderError(f"cannot load {folder.name} from {folder}: {library} has no class "
                               f"{class_name!r} (named in model_index.json)")
    if library == "transformers":
        config = cls.config_class.from_pretrained(str(folder))
        return cls(config)
    return cls.from_config(cls.load_config(str(folder)))


ALIGNED = 0.9  # share of the model's tensors a renaming must find to be trusted


def align_names(stored: dict[str, Any], model: torch.nn.Module) -> dict[str, Any] | None:
    """Checkpoint names as the model spells them, or None when no renaming fits.

    The libraries rename while loading: transformers 5 drops CLIP's ``vision_model.`` prefix
    that older checkpoints carry (4.x adds it), and reads LayerNorm ``gamma``/``beta`` as
    ``weight``/``bias``. The candidates are: as stored, without the stored names' common first
    part, with the model's common first part added; the one that finds most of the model's
    tensors wins, if it finds at least :data:`ALIGNED` of them (else the names are left to the
    loader's own report)."""
    names = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    legacy = {k: (k if k in names else re.sub(r"\.gamma$", ".weight", re.sub(r"\.beta$", ".bias", k)))
              for k in stored}
    base = {legacy[k]: v for k, v in stored.items()}
    candidates = [base]
    first = {k.split(".", 1)[0] for k in base}
    if len(first) == 1 and all("." in k for k in base):
        cut = len(next(iter(first))) + 1
        candidates.append({k[cut:]: v for k, v in base.items()})
    model_first = {n.split(".", 1)[0] for n in names}
    if len(model_first) == 1:
        prefix = next(iter(model_first)) + "."
        candidates.append({k if k.startswith(prefix) else prefix + k: v for k, v in base.items()})
    best = max(candidates, key=lambda c: len(names & set(c)))
    if not names or len(names & set(best)) < ALIGNED * len(names):
        return None
    return best
