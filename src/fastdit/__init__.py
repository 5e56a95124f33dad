"""fastdit: a fast inference engine for video diffusion transformers (Wan2.1, Wan2.2).

``fastdit.ops`` holds the kernel layer; ``fastdit.load(path)`` returns a video pipeline.
Nothing heavy happens at import time.
"""

__version__ = "0.1.0"


def load(path, device=None, dtype=None, **kwargs):
    """Load a diffusers-format Wan model folder as a pipeline (see :mod:`fastdit.pipelines`)."""
    from fastdit.pipelines import load as _load

    return _load(path, device=device, dtype=dtype, **kwargs)


__all__ = ["__version__", "load"]
