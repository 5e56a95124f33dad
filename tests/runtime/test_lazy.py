"""Lazy host loading: checkpoints read block by block into the host store equal the eager
loader's model; host memory stays near the store plus one block (RSS, in a fresh process)."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from fastdit.errors import CheckpointError
from fastdit.models.wan import WanConfig, WanTransformer
from fastdit.runtime import StreamPlan, stream_model
from fastdit.runtime.lazy import load_streamed, read_header
from tests.runtime.helpers import I2V, T2V5, clone, forward, inputs, model

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("layout,shard", [("diffusers", None), ("original", None), ("diffusers", 30_000)])
def test_lazy_load_equals_eager_load(tmp_path, layout, shard):
    config = I2V if layout == "original" else T2V5
    base = model(config)
    base.save_pretrained(tmp_path, layout=layout, max_shard_size=shard)
    args = inputs(config)
    ref = forward(base, args)
    lazy = load_streamed(tmp_path, StreamPlan.spread(config.num_layers, 1, 1), "cpu", dtype=torch.float32)
    torch.testing.assert_close(forward(lazy, args), ref, atol=0, rtol=0)
    eager = WanTransformer.from_pretrained(tmp_path, dtype=torch.float32)
    assert lazy.model.config == eager.config
    # the eager loader keeps safetensors' own buffers, whose alignment can change CPU GEMM
    # rounding in the last bit: equal to within that
    torch.testing.assert_close(forward(eager, args), ref, atol=1e-6, rtol=1e-5)


def test_lazy_fp8_equals_in_memory_fp8(tmp_path):
    base = model(T2V5)
    base.save_pretrained(tmp_path)
    args = inputs(T2V5)
    plan = StreamPlan.spread(5, 2, 1)
    lazy = load_streamed(tmp_path, plan, "cpu", dtype=torch.float32, weights="fp8")
    memory = stream_model(clone(base), plan, "cpu", weights="fp8")
    torch.testing.assert_close(forward(lazy, args), forward(memory, args), atol=0, rtol=0)


def test_lazy_load_converts_dtypes(tmp_path):
    """An fp32 checkpoint loaded in bf16: the fp32 parts stay fp32, the rest is rounded once."""
    base = model(T2V5)
    base.save_pretrained(tmp_path)
    lazy = load_streamed(tmp_path, StreamPlan.spread(5, 0, 1), "cpu", dtype=torch.bfloat16)
    eager = WanTransformer.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert lazy.model.blocks[0].scale_shift_table.dtype == torch.float32
    assert lazy.model.blocks[0].attn1.to_q.weight.dtype == torch.bfloat16
    lazy_state = {n: t for n, t in lazy.model.named_parameters()}
    for name, param in eager.named_parameters():
        assert torch.equal(lazy_state[name], param), name


def test_bad_checkpoints_are_checkpoint_errors(tmp_path):
    base = model(T2V5)
    base.save_pretrained(tmp_path)
    file = tmp_path / "diffusion_pytorch_model.safetensors"
    plan = StreamPlan.spread(5, 0, 1)
    # a missing tensor
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(file))
    save_file({k: v for k, v in tensors.items() if k != "blocks.3.ffn.net.2.bias"}, str(file))
    with pytest.raises(CheckpointError, match="lacks tensor.*blocks.3.ffn.net.2.bias"):
        load_streamed(tmp_path, plan, "cpu", dtype=torch.float32)
    # a mis-shaped one
    tensors["blocks.1.attn1.to_q.weight"] = torch.zeros(3, 3)
    save_file(tensors, str(file))
    with pytest.raises(CheckpointError, match="shape"):
        load_streamed(tmp_path, plan, "cpu", dtype=torch.float32)
    # a truncated file
    del tensors["blocks.1.attn1.to_q.weight"]
    save_file(tensors, str(file))
    data = file.read_bytes()
    file.write_bytes(data[: len(data) - 64])
    with pytest.raises(CheckpointError, match="truncated"):
        read_header(file)
    with pytest.raises(CheckpointError):
        load_streamed(tmp_path / "nowhere", plan, "cpu")


# ---- host memory -------------------------------------------------------------------
#: A ~270 MB bf16 model (8 blocks of 33.6 MB): big enough that two copies stand out.
BIG = WanConfig(num_attention_heads=8, attention_head_dim=128, in_channels=4, out_channels=4, text_dim=64,
                freq_dim=32, ffn_dim=4096, num_layers=8)

_CHILD = textwrap.dedent("""
    import json, sys, threading, time, torch
    from fastdit.runtime import StreamPlan
    from fastdit.runtime.lazy import load_streamed

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
        return 0

    peak = [0]
    def sample(stop):  # VmRSS every millisecond (VmHWM is reset below when the kernel allows)
        while not stop.is_set():
            peak[0] = max(peak[0], status("VmRSS"))
            time.sleep(0.001)
    load_streamed(sys.argv[2], StreamPlan.spread(5, 0, 1), "cpu", dtype=torch.bfloat16)  # warm-up:
    # the first load imports modules and pages in library code, which is not the model's memory
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        reset = True
    except OSError:
        reset = False
    before = status("VmRSS")
    stop = threading.Event()
    thread = threading.Thread(target=sample, args=(stop,), daemon=True)
    thread.start()
    model = load_streamed(sys.argv[1], StreamPlan.spread(8, 0, 1), "cpu", dtype=torch.bfloat16)
    stop.set()
    thread.join()
    hwm = status("VmHWM") if reset else 0
    store = model.streamer.store
    print(json.dumps({"before": before, "peak": max(peak[0], hwm), "store": store.nbytes,
                      "block": store.layout.nbytes, "reset": reset}))
""")


def _write_checkpoint(folder: Path, config: WanConfig) -> int:
    """A bf16 checkpoint of ``config`` with constant weights (quick to make; RSS does not care
    about the values); returns the bytes of its blocks."""
    from fastdit.models.wan.checkpoint import parameter_dtype
    from safetensors.torch import save_file

    with torch.device("meta"):
        meta = WanTransformer(config)
    tensors = {name: torch.full(p.shape, 0.01, dtype=parameter_dtype(name, torch.bfloat16))
               for name, p in meta.named_parameters()}
    folder.mkdir()
    save_file(tensors, str(folder / "diffusion_pytorch_model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config.to_diffusers_config()))
    return sum(t.numel() * t.element_size() for n, t in tensors.items() if n.startswith("blocks."))


def test_lazy_loading_keeps_host_memory_bounded(tmp_path):
    model_bytes = _write_checkpoint(tmp_path / "big", BIG)
    model(T2V5).save_pretrained(tmp_path / "tiny")
    result = subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path / "big"), str(tmp_path / "tiny")],
                            capture_output=True, text=True,
                            timeout=120, env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-2000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])
    growth = got["peak"] - got["before"]
    assert got["store"] >= model_bytes  # the blocks really are in the store
    # the store, one block (the tensor being read) and a little slack: never two copies
    assert growth <= got["store"] + 2 * got["block"] + 40_000_000, (growth, got)
    assert growth < 1.4 * model_bytes
