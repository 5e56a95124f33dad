"""GPU-only: LoRA merge and runtime adapters, fp8 single-file dequantisation and the few-step
schedule on the GPU, against the same work on the CPU (no diffusers needed)."""

import pytest
import torch
from safetensors.torch import save_file

from fastdit.models.wan import WanTransformer, diffusers_to_original_key
from fastdit.models.wan.lora import LoraAdapter, apply_loras
from fastdit.models.wan.single_file import load_transformer_file
from fastdit.schedulers.few_step import FewStepScheduler
from tests.models.lora_helpers import block_modules, make_lora, write_lora
from tests.models.wan_helpers import T2V

pytestmark = pytest.mark.gpu


def test_merge_on_gpu_equals_cpu(tmp_path):
    lora = make_lora(T2V, block_modules(T2V), rank=8, alpha=4.0, seed=1, dtype=torch.bfloat16)
    path = write_lora(tmp_path / "a.safetensors", lora, "original")
    cpu = WanTransformer.from_config(T2V, dtype=torch.bfloat16, seed=0)
    gpu = WanTransformer.from_config(T2V, dtype=torch.bfloat16, seed=0, device="cuda")
    gpu.load_state_dict(cpu.state_dict())
    apply_loras(cpu, [(path, 0.7)])
    result = apply_loras(gpu, [(path, 0.7)])
    assert result.merged == len(lora)
    for name, tensor in gpu.state_dict().items():
        ref = cpu.state_dict()[name]
        # both sum in fp32 and round once; products may differ by an fp32 ulp before rounding
        assert (tensor.cpu().float() - ref.float()).abs().max() <= 2 ** -8 * ref.float().abs().max(), name


def test_adapter_on_gpu_equals_merged_product():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4096, 512, generator=g).cuda().bfloat16()
    w = (torch.randn(1024, 512, generator=g) / 512 ** 0.5).cuda().bfloat16()
    down = (torch.randn(16, 512, generator=g) / 512 ** 0.5).cuda().bfloat16()
    up = (torch.randn(1024, 16, generator=g) * 0.1).cuda().bfloat16()
    y = LoraAdapter(down, up)(x, torch.nn.functional.linear(x, w))
    merged = (w.float() + up.float() @ down.float()).bfloat16()
    ref = torch.nn.functional.linear(x.float(), merged.float())
    cos = torch.nn.functional.cosine_similarity(y.float().flatten(), ref.flatten(), dim=0)
    assert cos > 0.9999


def test_fp8_single_file_dequantises_on_gpu(tmp_path):
    model = WanTransformer.from_config(T2V, dtype=torch.float32, seed=0)
    tensors = {}
    for name, w in model.state_dict().items():
        key = diffusers_to_original_key(name)
        if w.dim() == 2 and name.startswith("blocks.") and "norm" not in name:
            scale = w.abs().amax(dim=1, keepdim=True) / 448
            tensors[key] = (w / scale).to(torch.float8_e4m3fn)
            tensors[key + "_scale"] = scale
        else:
            tensors[key] = w
    path = tmp_path / "fp8.safetensors"
    save_file(tensors, str(path))
    on_gpu = load_transformer_file(path, T2V, dtype=torch.bfloat16, device="cuda")
    on_cpu = load_transformer_file(path, T2V, dtype=torch.bfloat16, device="cpu")
    for name, tensor in on_gpu.state_dict().items():
        assert tensor.is_cuda and torch.equal(tensor.cpu(), on_cpu.state_dict()[name]), name


def test_few_step_schedule_on_gpu():
    def run(device):
        sched = FewStepScheduler(boundary_step=2)
        sched.set_timesteps(4, device=device)
        sched.set_begin_index(0)
        x = torch.randn(1, 16, 3, 8, 8, generator=torch.Generator().manual_seed(0)).to(device)
        for t in sched.timesteps:
            x = sched.step(torch.tanh(x * 0.7 + t / 1000), t, x)[0]
        return sched.timesteps, x

    t_gpu, x_gpu = run("cuda")
    t_cpu, x_cpu = run("cpu")
    assert t_gpu.is_cuda and torch.equal(t_gpu.cpu(), t_cpu)
    assert x_gpu.dtype == torch.float32 and torch.allclose(x_gpu.cpu(), x_cpu, atol=1e-5)


def test_runtime_adapters_follow_the_model_to_the_gpu(tmp_path):
    """Adapters built on the CPU (an offloaded expert) move with the model; the bf16 forward
    on the GPU matches the merged model's."""
    from tests.models.wan_helpers import inputs

    lora = make_lora(T2V, block_modules(T2V), rank=8, alpha=4.0, seed=1)
    path = write_lora(tmp_path / "a.safetensors", lora, "original")
    runtime = WanTransformer.from_config(T2V, dtype=torch.bfloat16, seed=0)
    merged = WanTransformer.from_config(T2V, dtype=torch.bfloat16, seed=0)
    apply_loras(runtime, [(path, 0.7)], mode="runtime")
    apply_loras(merged, [(path, 0.7)])
    runtime.cuda()
    merged.cuda()
    assert runtime.blocks[0].ffn.net[0].proj.adapters[0].down.is_cuda
    args = [a.cuda().bfloat16() if a is not None and a.is_floating_point() else a for a in inputs(T2V)]
    args[1] = args[1].float()  # the timestep
    with torch.no_grad():
        got, ref = runtime(*args).float().flatten(), merged(*args).float().flatten()
    assert torch.nn.functional.cosine_similarity(got, ref, dim=0) > 0.9999
