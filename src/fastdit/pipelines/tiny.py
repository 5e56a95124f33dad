"""Tiny random Wan models in diffusers format, for tests and the demo (no network needed).

    make_tiny_model("out/tiny-wan", task="t2v")     # or "i2v", "ti2v", "a14b", "i2v-a14b"

The folder looks like a real checkpoint (model_index.json, tokenizer/, text_encoder/, vae/,
scheduler/, transformer/ [, transformer_2/, image_encoder/, image_processor/]), written by
diffusers' and transformers' own ``save_pretrained``; the weights are random, so the videos
it makes are noise. Every parameter gets small random noise so that no zero-initialised layer
hides a bug.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import string
import tempfile
from pathlib import Path

import torch

from fastdit.pipelines.atomic import PartialFolder, signals_deferred, umask
from fastdit.pipelines.spec import DEFAULTS_FILE, TINY_TASKS as TASKS

#: Written into every tiny model: the files it holds (only those are ever replaced).
MARKER = ".fastdit-tiny-model"
TINY_NAME = "tiny random Wan"
_LEGACY_FILE = re.compile(r"^(model_index\.json|fastdit_defaults\.json|(tokenizer|text_encoder|vae|scheduler|"
                          r"transformer|transformer_2|image_encoder|image_processor)/[^/]+\.(json|safetensors|model))$")

# Small enough for a CPU test, big enough that every code path is exercised.
TEXT_DIM = 32
HEADS, HEAD_DIM = 2, 16
CLIP_DIM = 32
# Generation defaults stored with the tiny models (a short clip in a few seconds on a CPU).
TINY_DEFAULTS = {"height": 64, "width": 64, "num_frames": 9, "num_inference_steps": 4,
                 "guidance_scale": 5.0, "flow_shift": 3.0, "fps": 8}
WORDS = ("the a an cat dog bird fish robot car city street forest river sea sky sun moon night day "
         "red green blue white black small big slow fast walks runs flies swims in on at of and with "
         "under over by near video style high quality blurry").split()


def make_tokenizer():
    """A T5 tokenizer over a small Unigram vocabulary, built in memory with ``tokenizers``."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    for ch in string.ascii_letters + string.digits + string.punctuation:
        pieces += [(ch, -5.0), ("\u2581" + ch, -4.5)]
    pieces += [("\u2581" + w, -3.0) for w in WORDS]
    tok = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)])
    return T5TokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                           extra_ids=0)


def _text_encoder(vocab_size: int):
    from transformers import UMT5Config, UMT5EncoderModel

    config = UMT5Config(vocab_size=vocab_size, d_model=TEXT_DIM, d_kv=8, d_ff=64, num_layers=2,
                        num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=16,
                        feed_forward_proj="gated-gelu", dense_act_fn="gelu_new", tie_word_embeddings=False)
    return UMT5EncoderModel(config)


def _vae(wan22: bool):
    from diffusers import AutoencoderKLWan

    if not wan22:  # Wan2.1 VAE: 16 channels, 4x8x8
        return AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                                temperal_downsample=[False, True, True])
    # Wan2.2 VAE (TI2V-5B): 48 channels, 4x16x16, residual blocks and 2x2 patchify
    g = torch.Generator().manual_seed(48)
    mean = (torch.randn(48, generator=g) * 0.5).tolist()
    std = (torch.rand(48, generator=g) * 2.0 + 0.5).tolist()
    return AutoencoderKLWan(base_dim=16, decoder_base_dim=24, z_dim=48, dim_mult=[1, 1, 1, 1],
                            num_res_blocks=1, temperal_downsample=[False, True, True], is_residual=True,
                            in_channels=12, out_channels=12, patch_size=2, scale_factor_spatial=16,
                            latents_mean=[round(x, 4) for x in mean], latents_std=[round(x, 4) for x in std])


def _transformer(in_channels: int, out_channels: int, clip: bool = False):
    from diffusers import WanTransformer3DModel

    dim = HEADS * HEAD_DIM
    return WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=HEADS, attention_head_dim=HEAD_DIM,
        in_channels=in_channels, out_channels=out_channels, text_dim=TEXT_DIM, freq_dim=32, ffn_dim=64,
        num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6,
        image_dim=CLIP_DIM if clip else None, added_kv_proj_dim=dim if clip else None, rope_max_seq_len=32)


def _scheduler(flow_shift: float):
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                   num_train_timesteps=1000, flow_shift=flow_shift)


def _clip():
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    config = CLIPVisionConfig(hidden_size=CLIP_DIM, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=4, image_size=32, patch_size=8, projection_dim=CLIP_DIM)
    return CLIPVisionModel(config), CLIPImageProcessor(crop_size=32, size={"shortest_edge": 32})


def _perturb(*modules, scale: float = 0.02) -> None:
    """Add small random noise to every parameter (so no zero-initialised layer stays zero)."""
    with torch.no_grad():
        for module in modules:
            for p in module.parameters():
                p.add_(torch.randn_like(p) * scale)


def _amplify_decoder(vae, gain: float = 1.5) -> None:
    """Scale the decoder's convolutions: with torch's default init a random decoder shrinks its
    input at every layer, so the frames would barely depend on the latents (and equality tests
    would be weak). With this gain the frames have a spread of about 0.35 in [-1, 1], unclipped."""
    with torch.no_grad():
        for p in vae.decoder.parameters():
            if p.dim() == 5:
                p.mul_(gain)


def make_tiny_model(directory: str | os.PathLike, task: str = "t2v", seed: int = 0, *,
                    force: bool = False) -> Path:
    """Write a tiny random diffusers-format Wan model for ``task`` into ``directory``.

    ``t2v``: Wan2.1 T2V. ``i2v``: Wan2.1 I2V with a tiny CLIP image encoder. ``ti2v``: Wan2.2
    TI2V-5B layout (48-channel VAE, expand_timesteps). ``a14b``: Wan2.2 T2V-A14B layout (two
    experts, boundary_ratio 0.875). ``i2v-a14b``: Wan2.2 I2V-A14B layout (two experts, image
    latents + mask channels, boundary_ratio 0.9).

    The model is built in a hidden folder next to ``directory`` and renamed into place at the
    end (an interruption leaves nothing). An existing ``directory`` is replaced only when it is
    empty or holds nothing but a tiny model this function wrote (its :data:`MARKER` lists the
    files); anything else is a :class:`~fastdit.errors.UserError`, unless ``force``.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    directory = Path(directory)
    if not force:
        check_replaceable(directory)
    created = _make_parents(directory.parent)
    try:
        with PartialFolder(directory) as part:
            _write_tiny_model(part.path, task, seed)
            with signals_deferred():
                _replace_folder(part.path, directory)
                part.commit()
    except BaseException:
        for folder in reversed(created):  # parents made for it, if still empty
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    return directory


def _write_tiny_model(directory: Path, task: str, seed: int) -> None:
    from diffusers import WanImageToVideoPipeline, WanPipeline

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tokenizer = make_tokenizer()
        text_encoder = _text_encoder(len(tokenizer))
        vae = _vae(wan22=task == "ti2v")
        z = vae.config.z_dim
        scheduler = _scheduler(TINY_DEFAULTS["flow_shift"])
        common = dict(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler)
        if task == "t2v":
            parts = [_transformer(z, z)]
            pipe = WanPipeline(transformer=parts[0], **common)
        elif task == "ti2v":
            parts = [_transformer(z, z)]
            pipe = WanPipeline(transformer=parts[0], expand_timesteps=True, **common)
        elif task == "a14b":
            parts = [_transformer(z, z), _transformer(z, z)]
            pipe = WanPipeline(transformer=parts[0], transformer_2=parts[1], boundary_ratio=0.875, **common)
        elif task == "i2v":
            parts = [_transformer(2 * z + 4, z, clip=True)]
            image_encoder, image_processor = _clip()
            parts.append(image_encoder)
            pipe = WanImageToVideoPipeline(transformer=parts[0], image_encoder=image_encoder,
                                           image_processor=image_processor, **common)
        else:  # i2v-a14b
            parts = [_transformer(2 * z + 4, z), _transformer(2 * z + 4, z)]
            pipe = WanImageToVideoPipeline(transformer=parts[0], transformer_2=parts[1], boundary_ratio=0.9,
                                           **common)
        _perturb(text_encoder, vae, *parts)
        _amplify_decoder(vae)
    _quiet_save(pipe, directory)
    defaults = {"name": TINY_NAME, **TINY_DEFAULTS}
    if task in ("a14b", "i2v-a14b"):
        defaults["guidance_scale_2"] = 4.0
    if task == "ti2v":
        defaults.update(fps=12)
    (directory / DEFAULTS_FILE).write_text(json.dumps(defaults, indent=2) + "\n")
    files = sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file())
    (directory / MARKER).write_text(json.dumps({"task": task, "seed": seed, "files": files}, indent=1) + "\n")
    _usual_modes(directory)


# ---------------------------------------------------------------------------------------
# Replacing only what it wrote
# ---------------------------------------------------------------------------------------
def written_by_us(directory: Path) -> tuple[bool, str]:
    """Whether ``directory`` holds nothing but a tiny model this module wrote; else a reason."""
    files = sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*")
                   if p.is_file() or p.is_symlink())
    marker = directory / MARKER
    if marker.is_file():
        try:
            listed = set(json.loads(marker.read_text())["files"]) | {MARKER}
        except (OSError, ValueError, KeyError, TypeError):
            return False, f"its {MARKER} cannot be read"
    else:
        defaults = directory / DEFAULTS_FILE
        try:
            legacy = json.loads(defaults.read_text()).get("name") == TINY_NAME
        except (OSError, ValueError, AttributeError):
            legacy = False
        if not legacy:
            return False, f"it has no {MARKER} (a folder make-tiny-model wrote has one)"
        listed = {f for f in files if _LEGACY_FILE.match(f)}  # before the marker existed
    foreign = [f for f in files if f not in listed]
    if foreign:
        return False, f"it holds files make-tiny-model did not write (e.g. {foreign[0]})"
    return True, ""


def check_replaceable(directory: Path) -> None:
    """Raise :class:`UserError` unless ``directory`` is absent, empty or one of our tiny models."""
    from fastdit.errors import UserError

    if not directory.exists() and not directory.is_symlink():
        return
    if not directory.is_dir() or directory.is_symlink():
        raise UserError(f"{directory} exists and is not a folder")
    if not any(directory.iterdir()):
        return
    ours, reason = written_by_us(directory)
    if not ours:
        raise UserError(f"{directory} is not empty and {reason}: choose another folder, or pass "
                        "--force (force=True) to replace it")


def _replace_folder(new: Path, target: Path) -> None:
    """Put ``new`` at ``target``; an existing ``target`` goes aside and is removed after."""
    if not target.exists():
        os.rename(new, target)
        return
    trash = Path(tempfile.mkdtemp(prefix=f".{target.name[:40]}.old-", dir=target.parent))
    os.rename(target, trash / "old")
    try:
        os.rename(new, target)
    except BaseException:
        os.rename(trash / "old", target)
        shutil.rmtree(trash, ignore_errors=True)
        raise
    shutil.rmtree(trash, ignore_errors=True)


def _make_parents(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; returns those it made (outermost first)."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    for path in reversed(missing):
        path.mkdir()
    return list(reversed(missing))


def _usual_modes(directory: Path) -> None:
    """Files 0666 and folders 0777 less the umask (safetensors writes its files 0600)."""
    mask = umask()
    directory.chmod(0o777 & ~mask)
    for path in directory.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)


def _quiet_save(pipe, directory: Path) -> None:
    """save_pretrained without the libraries' progress bars."""
    from diffusers.utils import logging as dlogging
    from transformers.utils import logging as tlogging

    was_t = tlogging.is_progress_bar_enabled()
    tlogging.disable_progress_bar()
    dlogging.disable_progress_bar()
    try:
        pipe.save_pretrained(str(directory))
    finally:
        if was_t:
            tlogging.enable_progress_bar()
        dlogging.enable_progress_bar()
