"""Model folder inspection (task, strides, defaults, known models), weight-file checks and
request validation: everything the CLI checks before loading a model."""

import json
import shutil
import struct

import pytest

from fastdit.pipelines import InputError, ModelFolderError, inspect_model
from fastdit.pipelines.spec import KNOWN_MODELS, check_safetensors
from fastdit.pipelines.wan import resolve_request


@pytest.mark.parametrize("task, cls_task, image_mode, multiple, experts, clip", [
    ("t2v", "t2v", "none", 16, False, False),
    ("i2v", "i2v", "required", 16, False, True),
    ("ti2v", "ti2v", "optional", 32, False, False),
    ("a14b", "t2v-a14b", "none", 16, True, False),
    ("i2v-a14b", "i2v-a14b", "required", 16, True, False),
])
def test_tiny_model_tasks(tiny_model, task, cls_task, image_mode, multiple, experts, clip):
    spec = inspect_model(tiny_model(task))
    assert spec.task == cls_task
    assert spec.image_mode == image_mode
    assert spec.spatial_multiple == multiple
    assert spec.two_experts == experts
    assert spec.has_clip == clip
    assert spec.latent_channels == (48 if task == "ti2v" else 16)
    # the tiny models carry their own defaults (small and fast)
    assert (spec.defaults.height, spec.defaults.width, spec.defaults.num_frames) == (64, 64, 9)
    assert spec.param_counts["transformer"] > 0


def _fake_folder(root, transformer, *, cls="WanPipeline", extra=None, vae=None):
    """A folder with only the JSON files of a model (for inspect_model(check_files=False))."""
    root.mkdir(parents=True)
    index = {"_class_name": cls, "tokenizer": ["transformers", "T5TokenizerFast"],
             "text_encoder": ["transformers", "UMT5EncoderModel"], "vae": ["diffusers", "AutoencoderKLWan"],
             "scheduler": ["diffusers", "UniPCMultistepScheduler"],
             "transformer": ["diffusers", "WanTransformer3DModel"], **(extra or {})}
    (root / "model_index.json").write_text(json.dumps(index))
    for name in ("tokenizer", "text_encoder", "vae", "scheduler", "transformer", "transformer_2"):
        (root / name).mkdir()
    (root / "tokenizer" / "tokenizer_config.json").write_text("{}")
    (root / "text_encoder" / "config.json").write_text("{}")
    (root / "transformer_2" / "config.json").write_text(json.dumps(transformer))
    (root / "vae" / "config.json").write_text(json.dumps(vae or {"z_dim": 16}))
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps({"flow_shift": 3.0}))
    (root / "transformer" / "config.json").write_text(json.dumps(transformer))
    return root


def _cfg(heads, layers, in_ch=16, image_dim=None):
    return {"num_attention_heads": heads, "attention_head_dim": 128, "num_layers": layers,
            "in_channels": in_ch, "patch_size": [1, 2, 2], "image_dim": image_dim}


@pytest.mark.parametrize("name, cfg, cls, extra, vae", [
    ("Wan2.1-T2V-1.3B", _cfg(12, 30), "WanPipeline", None, None),
    ("Wan2.1-T2V-14B", _cfg(40, 40), "WanPipeline", None, None),
    ("Wan2.1-I2V-14B-480P", _cfg(40, 40, 36, 1280), "WanImageToVideoPipeline", None, None),
    ("Wan2.2-T2V-A14B", _cfg(40, 40), "WanPipeline",
     {"boundary_ratio": 0.875, "transformer_2": ["diffusers", "WanTransformer3DModel"]}, None),
    ("Wan2.2-I2V-A14B", _cfg(40, 40, 36), "WanImageToVideoPipeline",
     {"boundary_ratio": 0.9, "transformer_2": ["diffusers", "WanTransformer3DModel"]}, None),
    ("Wan2.2-TI2V-5B", _cfg(24, 30, 48), "WanPipeline", {"expand_timesteps": True},
     {"z_dim": 48, "scale_factor_spatial": 16}),
])
def test_known_models_by_architecture(tmp_path, name, cfg, cls, extra, vae):
    spec = inspect_model(_fake_folder(tmp_path / "some-model", cfg, cls=cls, extra=extra, vae=vae),
                         check_files=False)
    assert spec.name == name
    assert spec.defaults == KNOWN_MODELS[name]
    if name == "Wan2.2-TI2V-5B":
        assert spec.spatial_multiple == 32 and spec.defaults.fps == 24
    if "A14B" in name:
        assert spec.two_experts and spec.defaults.guidance_scale_2 is not None


def test_known_model_by_folder_name(tmp_path):
    spec = inspect_model(_fake_folder(tmp_path / "Wan2.1-I2V-14B-720P-Diffusers", _cfg(40, 40, 36, 1280),
                                      cls="WanImageToVideoPipeline"), check_files=False)
    assert spec.name == "Wan2.1-I2V-14B-720P"
    assert (spec.defaults.height, spec.defaults.width) == (720, 1280)


def test_unknown_model_gets_diffusers_defaults(tmp_path):
    spec = inspect_model(_fake_folder(tmp_path / "m", _cfg(2, 2)), check_files=False)
    assert spec.name is None
    assert (spec.defaults.height, spec.defaults.width, spec.defaults.num_frames) == (480, 832, 81)


# ---- bad folders ---------------------------------------------------------------------------
def _copy(tiny_model, tmp_path, task="t2v"):
    return shutil.copytree(tiny_model(task), tmp_path / "model")


def test_missing_and_not_a_model(tmp_path):
    with pytest.raises(ModelFolderError, match="model folder not found"):
        inspect_model(tmp_path / "nope")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ModelFolderError, match="is not a folder"):
        inspect_model(tmp_path / "file.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelFolderError, match="no model_index.json"):
        inspect_model(tmp_path / "empty")


def test_bad_model_index(tiny_model, tmp_path):
    root = _copy(tiny_model, tmp_path)
    (root / "model_index.json").write_text("{not json")
    with pytest.raises(ModelFolderError, match="cannot parse .*model_index.json"):
        inspect_model(root)
    (root / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    with pytest.raises(ModelFolderError, match="'FluxPipeline' is not supported"):
        inspect_model(root)


def test_missing_component_folder(tiny_model, tmp_path):
    root = _copy(tiny_model, tmp_path)
    shutil.rmtree(root / "vae")
    with pytest.raises(ModelFolderError, match="no vae/ folder"):
        inspect_model(root)


def _weights(root, part="transformer"):
    return next((root / part).glob("*.safetensors"))


@pytest.mark.parametrize("damage, message", [
    (lambda b: b"garbage" * 3, "bad safetensors header"),
    (lambda b: b[:4], "too short"),
    (lambda b: b[: len(b) - 100], "truncated"),
    (lambda b: struct.pack("<Q", 1 << 40) + b[8:], "bad safetensors header"),
])
def test_corrupt_weights_name_the_file(tiny_model, tmp_path, damage, message):
    root = _copy(tiny_model, tmp_path)
    path = _weights(root)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(ModelFolderError, match=message) as info:
        inspect_model(root)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


def test_tensor_with_wrong_byte_count(tiny_model, tmp_path):
    root = _copy(tiny_model, tmp_path)
    path = _weights(root)
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    name = next(k for k in header if k != "__metadata__")
    header[name]["shape"] = [s * 2 for s in header[name]["shape"]]
    new = json.dumps(header, separators=(",", ":")).encode()
    new += b" " * (n - len(new)) if len(new) <= n else b""
    assert len(new) == n, "test needs a header of the same length"
    path.write_bytes(data[:8] + new + data[8 + n:])
    with pytest.raises(ModelFolderError, match=f"tensor '{name}' has"):
        check_safetensors(path)


def test_missing_shard(tiny_model, tmp_path):
    root = _copy(tiny_model, tmp_path)
    (root / "transformer" / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "diffusion_pytorch_model-00002-of-00002.safetensors"}}))
    with pytest.raises(ModelFolderError, match="missing weights file .*00002-of-00002"):
        inspect_model(root)


def test_no_weights(tiny_model, tmp_path):
    root = _copy(tiny_model, tmp_path)
    _weights(root, "vae").unlink()
    with pytest.raises(ModelFolderError, match="holds no weights"):
        inspect_model(root)


# ---- requests --------------------------------------------------------------------------------
@pytest.mark.parametrize("task, kwargs, message", [
    ("t2v", dict(num_frames=10), "num_frames must be 4k\\+1"),
    ("t2v", dict(num_frames=0), "num_frames must be 4k\\+1"),
    ("t2v", dict(height=40), "height must be a positive multiple of 16"),
    ("t2v", dict(width=-16), "width must be a positive multiple of 16"),
    ("ti2v", dict(height=48), "height must be a positive multiple of 32"),
    ("t2v", dict(num_inference_steps=0), "num_inference_steps must be at least 1"),
    ("t2v", dict(guidance_scale=-1.0), "guidance_scale must be >= 0"),
    ("t2v", dict(guidance_scale=float("nan")), "finite"),
    ("a14b", dict(guidance_scale_2=-0.5), "guidance_scale_2 must be >= 0"),
    ("t2v", dict(guidance_scale_2=3.0), "only for two-expert models"),
    ("t2v", dict(num_frames=8.5), "num_frames must be an integer"),
    ("t2v", dict(max_sequence_length=0), "max_sequence_length must be between 1 and 512"),
    ("i2v", dict(), "image-to-video model: an image is required"),
    ("i2v-a14b", dict(), "an image is required"),
    ("t2v", dict(has_image=True), "text-to-video model: it takes no image"),
])
def test_bad_requests(tiny_model, task, kwargs, message):
    spec = inspect_model(tiny_model(task))
    with pytest.raises(InputError, match=message):
        resolve_request(spec, **kwargs)


def test_request_defaults(tiny_model):
    spec = inspect_model(tiny_model("a14b"))
    req = resolve_request(spec)
    assert (req.height, req.width, req.num_frames, req.num_inference_steps) == (64, 64, 9, 4)
    assert (req.guidance_scale, req.guidance_scale_2) == (5.0, 4.0)  # the model's pair
    req = resolve_request(spec, guidance_scale=2.5)
    assert req.guidance_scale_2 == 2.5  # as diffusers: guidance_scale_2 follows guidance_scale
    assert resolve_request(spec, guidance_scale=2.5, guidance_scale_2=1.0).guidance_scale_2 == 1.0
    assert resolve_request(inspect_model(tiny_model("ti2v")), has_image=True).num_frames == 9


def test_choose_offload(tiny_model):
    """Wan2.2 A14B in bf16 (UMT5 5.7B + two 14.3B experts): everything fits on an H200, the idle
    expert goes to CPU memory on an H100, everything idle on a 24 GB card."""
    import torch

    from fastdit.pipelines.wan import choose_offload

    spec = inspect_model(tiny_model("a14b"))
    spec.param_counts = {"text_encoder": 5_700_000_000, "vae": 127_000_000, "transformer": 14_300_000_000,
                         "transformer_2": 14_300_000_000}
    assert choose_offload(spec, torch.bfloat16, 140 * 2**30) == "none"
    assert choose_offload(spec, torch.bfloat16, 79 * 2**30) == "experts"
    assert choose_offload(spec, torch.bfloat16, 24 * 2**30) == "model"
    assert choose_offload(spec, torch.float32, 140 * 2**30) == "experts"


def test_mistyped_local_path_is_not_a_hub_id(tmp_path, monkeypatch):
    """'out/tiny-wna' (with out/ here) is a local path gone wrong, not a Hub id to download."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    with pytest.raises(ModelFolderError, match=r"^model folder not found: out/tiny-wna$"):
        inspect_model("out/tiny-wna")
