"""Platform detection, overrides, capability queries and the optimize_vae hook."""

import logging
import subprocess
import sys

import pytest
import torch

from fastdit.config import EngineConfig, PlatformConfig, set_config
from fastdit.platforms import PLATFORM_NAMES, current_platform, detect_platform, platform_class


def test_cpu_is_detected_without_a_gpu(fresh_config):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    current_platform.cache_clear()
    platform = current_platform()
    assert platform.name == "cpu"
    assert platform is current_platform()  # resolved once
    assert platform.compute_capability() is None and not platform.is_hopper()
    assert platform.dist_backend == "gloo"


@pytest.mark.parametrize("name", PLATFORM_NAMES)
def test_override_selects_each_platform(fresh_config, name):
    set_config(EngineConfig(platform=PlatformConfig(platform=name)))
    platform = detect_platform()
    assert platform.name == name
    assert platform.provider_priority("rms_norm")[-1] == "native"
    assert platform.provider_priority("attention") == ("sdpa",)


def test_capabilities_per_kind():
    assert platform_class("npu").compile_dependable is False
    assert all(platform_class(n).compile_dependable for n in PLATFORM_NAMES if n != "npu")
    backends = {n: platform_class(n).dist_backend for n in PLATFORM_NAMES}
    assert backends == {"rocm": "nccl", "cuda": "nccl", "musa": "mccl", "npu": "hccl",
                        "xpu": "xccl", "mps": "gloo", "cpu": "gloo"}
    assert platform_class("rocm").op_providers["rms_norm"][0] == "aiter"
    assert platform_class("cuda").default_providers[0] == "triton"


def test_unknown_platform_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown platform 'tpu'"):
        platform_class("tpu")


def test_platform_is_not_resolved_at_import():
    code = "import fastdit, fastdit.ops, fastdit.platforms as p; print(p.current_platform.cache_info().currsize)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0"


@pytest.fixture
def cudnn_benchmark():
    saved = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False
    yield
    torch.backends.cudnn.benchmark = saved


def test_optimize_vae_rocm_enables_autotune_and_says_it_is_process_wide(fresh_config, cudnn_benchmark,
                                                                       caplog):
    vae = object()
    with caplog.at_level(logging.INFO, logger="fastdit.platforms"):
        assert platform_class("rocm")().optimize_vae(vae) is vae
    assert torch.backends.cudnn.benchmark is True
    assert any("process-wide" in r.message for r in caplog.records)


def test_optimize_vae_cuda_is_off_by_default_and_a_setting(fresh_config, cudnn_benchmark):
    platform_class("cuda")().optimize_vae(object())
    assert torch.backends.cudnn.benchmark is False
    set_config(EngineConfig(platform=PlatformConfig(vae_autotune=True)))
    platform_class("cuda")().optimize_vae(object())
    assert torch.backends.cudnn.benchmark is True


def test_optimize_vae_rocm_can_be_switched_off(fresh_config, cudnn_benchmark):
    set_config(EngineConfig(platform=PlatformConfig(vae_autotune=False)))
    platform_class("rocm")().optimize_vae(object())
    assert torch.backends.cudnn.benchmark is False


def test_capabilities_the_features_need(fresh_config):
    """device_count / set_device / mem_get_info / streams / events / pinning / fp8 dtype /
    has_capability answer on every platform class without touching a device that is absent."""
    cpu = platform_class("cpu")()
    assert cpu.device_count() == 1 and cpu.set_device(0) == torch.device("cpu")
    assert cpu.mem_get_info() is None and cpu.stream() is None and cpu.event() is None
    assert not cpu.pin_memory_available() and cpu.fp8_dtype() == torch.float8_e4m3fn
    assert not cpu.has_capability((9, 0))

    class Hopper(platform_class("cuda")):
        def compute_capability(self):
            return (9, 0)

    hopper = Hopper()
    assert hopper.has_capability((8, 9)) and hopper.has_capability((9, 0))
    assert not hopper.has_capability((10, 0))
