"""nn.Modules that call :mod:`fastdit.ops`; no platform branches in here."""

from fastdit.layers.attention import Attention
from fastdit.layers.linear import Linear
from fastdit.layers.mlp import FeedForward, MLPEmbedder, sinusoidal_embedding
from fastdit.layers.norm import LayerNorm, LayerNormScaleShift, RMSNorm, ScaleResidualNormScaleShift
from fastdit.layers.rope import RotaryEmbedding3D

__all__ = [
    "Attention",
    "FeedForward",
    "LayerNorm",
    "LayerNormScaleShift",
    "Linear",
    "MLPEmbedder",
    "RMSNorm",
    "RotaryEmbedding3D",
    "ScaleResidualNormScaleShift",
    "sinusoidal_embedding",
]
