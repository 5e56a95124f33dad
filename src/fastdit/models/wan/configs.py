"""Wan transformer configurations: :class:`WanConfig` and the named configs of real checkpoints.

Field names are those of diffusers' ``WanTransformer3DModel`` config, so a diffusers
``config.json`` round-trips through :meth:`WanConfig.from_diffusers_config` /
:meth:`WanConfig.to_diffusers_config`. The official Wan layout (``dim``, ``num_heads``,
``in_dim``, ...) is read by :meth:`WanConfig.from_original_config`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping


@dataclass(frozen=True)
class WanConfig:
    """Architecture of one Wan transformer (Wan2.1 / Wan2.2, T2V, I2V, TI2V)."""

    patch_size: tuple[int, int, int] = (1, 2, 2)
    num_attention_heads: int = 40
    attention_head_dim: int = 128
    in_channels: int = 16
    out_channels: int = 16
    text_dim: int = 4096
    freq_dim: int = 256
    ffn_dim: int = 13824
    num_layers: int = 40
    cross_attn_norm: bool = True
    qk_norm: str = "rms_norm_across_heads"
    eps: float = 1e-6
    image_dim: int | None = None  # CLIP image embedding width (Wan2.1 I2V / FLF2V: 1280)
    added_kv_proj_dim: int | None = None  # input width of the image k/v projections (= dim)
    rope_max_seq_len: int = 1024
    pos_embed_seq_len: int | None = None  # FLF2V: 2 * 257 image tokens with a learned position

    def __post_init__(self) -> None:
        object.__setattr__(self, "patch_size", tuple(int(p) for p in self.patch_size))
        if self.out_channels is None:
            object.__setattr__(self, "out_channels", self.in_channels)
        problems = []
        if len(self.patch_size) != 3 or min(self.patch_size) < 1:
            problems.append(f"patch_size must be three positive ints, got {self.patch_size}")
        for name in ("num_attention_heads", "attention_head_dim", "in_channels", "out_channels",
                     "text_dim", "freq_dim", "ffn_dim", "num_layers", "rope_max_seq_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                problems.append(f"{name} must be a positive int, got {value!r}")
        if isinstance(self.attention_head_dim, int) and self.attention_head_dim % 2:
            problems.append(f"attention_head_dim must be even (RoPE), got {self.attention_head_dim}")
        if (self.image_dim is None) != (self.added_kv_proj_dim is None):
            problems.append("image_dim and added_kv_proj_dim must be given together "
                            f"(got {self.image_dim} and {self.added_kv_proj_dim})")
        if self.qk_norm != "rms_norm_across_heads":  # the only q/k norm Wan checkpoints use
            problems.append(f"qk_norm must be 'rms_norm_across_heads', got {self.qk_norm!r}")
        if self.pos_embed_seq_len is not None and self.image_dim is None:
            problems.append("pos_embed_seq_len needs image_dim")
        if problems:
            raise ValueError("WanConfig: " + "; ".join(problems))

    # ------------------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def has_image_input(self) -> bool:
        """Wan2.1 I2V / FLF2V: CLIP image tokens go through their own cross-attention k/v."""
        return self.image_dim is not None

    def num_parameters(self) -> int:
        """Parameter count of the transformer (no model needed)."""
        d, f, p = self.dim, self.ffn_dim, self.patch_size
        attn = 4 * (d * d + d) + 2 * d
        block = 2 * attn + (2 * d if self.cross_attn_norm else 0) + (d * f + f + f * d + d) + 6 * d
        if self.has_image_input:
            block += 2 * (self.added_kv_proj_dim * d + d) + d
        total = self.num_layers * block
        total += self.in_channels * d * p[0] * p[1] * p[2] + d  # patch embedding
        total += (self.freq_dim * d + d) + (d * d + d) + (d * 6 * d + 6 * d)  # time
        total += (self.text_dim * d + d) + (d * d + d)  # text
        if self.has_image_input:
            i = self.image_dim
            total += 2 * i + (i * i + i) + (i * d + d) + 2 * d
            total += (self.pos_embed_seq_len or 0) * i
        total += d * self.out_channels * p[0] * p[1] * p[2] + self.out_channels * p[0] * p[1] * p[2]
        return total + 2 * d

    # ------------------------------------------------------------------------------------
    @classmethod
    def from_diffusers_config(cls, config: Mapping[str, Any]) -> "WanConfig":
        """From a diffusers ``WanTransformer3DModel`` config dict (``transformer/config.json``).

        Keys starting with ``_`` are metadata and ignored; any other unknown key (e.g. VACE's
        ``vace_layers``) is an error, since this model would silently ignore it.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        class_name = config.get("_class_name")
        if class_name not in (None, "WanTransformer3DModel"):
            raise ValueError(f"WanConfig: config is for {class_name!r}, not WanTransformer3DModel")
        unknown = sorted(k for k in config if not k.startswith("_") and k not in known)
        if unknown:
            raise ValueError(f"WanConfig: unsupported diffusers config keys {unknown}")
        return cls(**{k: v for k, v in config.items() if k in known})

    def to_diffusers_config(self) -> dict[str, Any]:
        """A diffusers config dict (``WanTransformer3DModel.from_config`` accepts it)."""
        out: dict[str, Any] = {"_class_name": "WanTransformer3DModel"}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_original_config(cls, config: Mapping[str, Any], *, cross_attn_norm: bool | None = None,
                             image_dim: int | None = None,
                             pos_embed_seq_len: int | None = None) -> "WanConfig":
        """From the official Wan ``config.json`` (``dim``, ``num_heads``, ``in_dim``, ...).

        What the official config does not say (whether the checkpoint has an image embedder,
        its width, a cross-attention norm) the loader reads off the checkpoint's tensors and
        passes in; ``model_type`` alone cannot tell Wan2.1 I2V (CLIP tokens) from Wan2.2 I2V.
        """
        try:
            dim, heads = int(config["dim"]), int(config["num_heads"])
            fields = dict(
                patch_size=tuple(config.get("patch_size", (1, 2, 2))),
                num_attention_heads=heads,
                attention_head_dim=dim // heads,
                in_channels=int(config["in_dim"]),
                out_channels=int(config.get("out_dim", config["in_dim"])),
                text_dim=int(config.get("text_dim", 4096)),
                freq_dim=int(config.get("freq_dim", 256)),
                ffn_dim=int(config["ffn_dim"]),
                num_layers=int(config["num_layers"]),
                eps=float(config.get("eps", 1e-6)),
            )
        except KeyError as exc:
            raise ValueError(f"WanConfig: original Wan config lacks {exc.args[0]!r}") from None
        if dim % heads:
            raise ValueError(f"WanConfig: dim={dim} is not a multiple of num_heads={heads}")
        fields["cross_attn_norm"] = bool(config.get("cross_attn_norm", True)
                                         if cross_attn_norm is None else cross_attn_norm)
        if image_dim is not None:
            fields.update(image_dim=image_dim, added_kv_proj_dim=dim,
                          pos_embed_seq_len=pos_embed_seq_len)
        return cls(**fields)

    def to_original_config(self, model_type: str | None = None) -> dict[str, Any]:
        """The official Wan ``config.json`` for this architecture."""
        if model_type is None:
            model_type = ("flf2v" if self.pos_embed_seq_len else "i2v" if self.has_image_input
                          else "ti2v" if self.in_channels == 48 else
                          "i2v" if self.in_channels == 36 else "t2v")
        return {
            "_class_name": "WanModel", "model_type": model_type, "patch_size": list(self.patch_size),
            "text_len": 512, "in_dim": self.in_channels, "dim": self.dim, "ffn_dim": self.ffn_dim,
            "freq_dim": self.freq_dim, "text_dim": self.text_dim, "out_dim": self.out_channels,
            "num_heads": self.num_attention_heads, "num_layers": self.num_layers,
            "window_size": [-1, -1], "qk_norm": self.qk_norm is not None,
            "cross_attn_norm": self.cross_attn_norm, "eps": self.eps,
        }


_T2V_14B = WanConfig(num_attention_heads=40, ffn_dim=13824, num_layers=40)
_I2V_14B = dataclasses.replace(_T2V_14B, in_channels=36, image_dim=1280, added_kv_proj_dim=5120)

#: The transformers of the released checkpoints (Wan-AI/<name> and Wan-AI/<name>-Diffusers).
WAN_CONFIGS: dict[str, WanConfig] = {
    "Wan2.1-T2V-1.3B": WanConfig(num_attention_heads=12, ffn_dim=8960, num_layers=30),
    "Wan2.1-T2V-14B": _T2V_14B,
    "Wan2.1-I2V-14B-480P": _I2V_14B,
    "Wan2.1-I2V-14B-720P": _I2V_14B,
    "Wan2.1-FLF2V-14B-720P": dataclasses.replace(_I2V_14B, pos_embed_seq_len=2 * 257),
    # Wan2.2 A14B: two experts of this shape (transformer/ high noise, transformer_2/ low noise)
    "Wan2.2-T2V-A14B": _T2V_14B,
    "Wan2.2-I2V-A14B": dataclasses.replace(_T2V_14B, in_channels=36),
    "Wan2.2-TI2V-5B": WanConfig(num_attention_heads=24, ffn_dim=14336, num_layers=30,
                                in_channels=48, out_channels=48),
}


def get_config(name: str) -> WanConfig:
    """A named config; the error lists the known names."""
    try:
        return WAN_CONFIGS[name]
    except KeyError:
        raise KeyError(f"unknown Wan config {name!r}; known: {', '.join(WAN_CONFIGS)}") from None
