"""Which published model a transformer is, for the policies' constants (coefficients, tables)."""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("fastdit.cache")

# 480x832 and 720x1280 pixels: an I2V-14B request above the midpoint takes the 720P constants
_I2V_720P_AREA = (480 * 832 + 720 * 1280) // 2


def identify_model(name: str | None, config: Any = None, *, two_experts: bool = False,
                   height: int | None = None, width: int | None = None) -> str | None:
    """A ``KNOWN_MODELS`` name: ``name`` when given (the folder was recognised), else read
    from the architecture (``config``: a WanConfig-like object); None when it matches none.

    Wan2.1 I2V-14B 480P and 720P share one architecture: the request's area picks one.
    FLF2V (first-last frame) has no published constants: None.
    """
    if name:
        return name
    if config is None or getattr(config, "pos_embed_seq_len", None):  # FLF2V: no constants
        return None
    dim = getattr(config, "dim", None)
    layers, channels = getattr(config, "num_layers", None), getattr(config, "in_channels", None)
    image = getattr(config, "image_dim", None) is not None
    guess = None
    if (dim, layers, channels) == (1536, 30, 16) and not image:
        guess = "Wan2.1-T2V-1.3B"
    elif (dim, layers, channels) == (3072, 30, 48):
        guess = "Wan2.2-TI2V-5B"
    elif (dim, layers) == (5120, 40) and two_experts:
        guess = {16: "Wan2.2-T2V-A14B", 36: "Wan2.2-I2V-A14B"}.get(channels)
    elif (dim, layers) == (5120, 40) and image and channels == 36:
        area = (height or 480) * (width or 832)
        guess = "Wan2.1-I2V-14B-720P" if area > _I2V_720P_AREA else "Wan2.1-I2V-14B-480P"
    elif (dim, layers, channels) == (5120, 40, 16) and not image:
        guess = "Wan2.1-T2V-14B"
    if guess:
        log.debug("cache: the transformer looks like %s (its architecture)", guess)
    return guess
