"""Why did diffusers run slower in run2's transformer benchmark than inside its pipeline?

Builds the 1.3B diffusers transformer two ways (run2's way: from_config on the meta device,
to_empty, weights copied in; and diffusers_reference: weights assigned, buffers moved) and
prints one forward's time and its top CUDA kernels for each.
"""

import statistics
import sys
import time

import torch

sys.path.insert(0, "benchmarks")
from transformer import inputs, profile  # noqa: E402

from fastdit.models.wan import WanTransformer  # noqa: E402
from fastdit.models.wan.reference import diffusers_reference  # noqa: E402


def run2_way(cfg, state, device, dtype):
    from diffusers import WanTransformer3DModel

    with torch.device("meta"):
        model = WanTransformer3DModel.from_config(cfg.to_diffusers_config())
    model = model.to_empty(device=device)
    keep = tuple(WanTransformer3DModel._keep_in_fp32_modules)
    for name, param in model.named_parameters():
        param.data = param.data.to(torch.float32 if any(p in name.split(".") for p in keep) else dtype)
    model.load_state_dict(state, strict=False)
    with torch.device(device):
        model.rope = type(model.rope)(cfg.attention_head_dim, cfg.patch_size, cfg.rope_max_seq_len)
    return model.eval().requires_grad_(False)


def timed(fn, n=3):
    fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def main():
    device, dtype = torch.device("cuda"), torch.bfloat16
    model = WanTransformer.from_config("Wan2.1-T2V-1.3B", dtype=dtype, device=device, seed=0)
    x = inputs(model.config, 1, 81, 480, 832, device, dtype)
    with torch.no_grad():
        for name, ref in (("reference (assigned)", diffusers_reference(model)),
                          ("run2 construction", run2_way(model.config, model.state_dict(), device, dtype))):
            call = lambda: ref(*x, return_dict=False)[0]  # noqa: E731
            print(f"{name}: {timed(call):.4f} s; rope buffer dtype {ref.rope.freqs_cos.dtype}", flush=True)
            profile(lambda *a: ref(*a, return_dict=False)[0], x, top=4)
            del ref


if __name__ == "__main__":
    main()
