"""VAE decode: where its time goes and what a faster decode could use (issue 11's few-step videos).

    python benchmarks/vae.py --out /tmp/vae.json            # GPU: Wan2.1 VAE, 480x832x81, bf16
    python benchmarks/vae.py --vae wan22 --height 704 --width 1280 --frames 121
    python benchmarks/vae.py --tiny --out /tmp/vae.json     # CPU, toy VAE, seconds

A 4-step 480p video spent 2.2 s of its 4.3 s in the decode stage with diffusers'
``AutoencoderKLWan.decode`` (h200-run2): about 275 TFLOP of convolutions at 480x832x81
(counted here with ``FlopCounterMode``), 150 TFLOP/s for ``vae.decode``'s 1.83 s on an H200,
plus 0.3 s turning the video into numpy frames. fastdit's NDHWC decode (the CUDA default since
h200-run13) takes 1.15 s. This script measures, on one random VAE (diffusers' init, bf16) and
one random latent:

* ``eager``: ``vae.decode(z)`` as the pipelines call it;
* ``fastdit``: :func:`fastdit.models.wan.vae.decode` (``vae_decoder="fastdit"``): the same
  decode with one fused norm + SiLU op per norm (``ops.channel_rms_norm``, its provider named in
  the JSON) and padding-free causal convolutions; ``fastdit-channels-last``: the same with
  NDHWC activations and weight copies (``...-cudnn-benchmark``: with cuDNN's autotuner;
  ``...-chunk4``: four latent frames a chunk after the first, ``frames_per_chunk=4``);
* ``cudnn-benchmark``: the same with ``torch.backends.cudnn.benchmark = True`` (process-wide);
* ``channels-last``: the VAE's weights in ``torch.channels_last_3d`` and the latent too (cuDNN's
  tensor-core convolutions want NDHWC; whether the pads, concatenations and norms between them
  keep the layout is what this measures);
* ``compile``: ``torch.compile`` of the decoder's forward (its per-chunk Python loop stays);
* ``compile-norms``: ``torch.compile`` of each ``WanRMS_norm`` alone (dynamic shapes): its
  fp32 normalise, casts, scale and gamma as one kernel, what a fused norm op would save;

``--frames-stage``: the decoded video to numpy frames, diffusers' way and fastdit's (pinned);
``--conv-sweep``: the full-resolution 96-channel convolution alone, with and without its bias,
with channels padded to 128 (and the 192-channel one);
``--profile-variant V``: a kernel profile of variant V's decode too; ``--layouts V``: the memory
layouts V's element-wise, copy and convolution ops read and write (which ops mix layouts);

each as seconds (median of ``--runs`` after a warm-up), peak memory, and its frames' largest
difference and PSNR against ``eager``'s. First (before the variants) one profiled ``eager`` decode, its GPU kernel time
grouped (convolution, normalisation, element-wise, copies / concatenation / padding,
upsampling, other) with the top kernels: the breakdown a faster decode has to attack. The JSON
is written after every part.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import e2e  # noqa: E402  (the VAE configurations and the sync helper)
from kernel_profile import grouped, kernel_seconds, profiled  # noqa: E402

VARIANTS = ("eager", "fastdit", "fastdit-channels-last", "fastdit-channels-last-cudnn-benchmark",
            "fastdit-chunk4", "fastdit-channels-last-chunk4", "cudnn-benchmark", "channels-last", "compile",
            "compile-norms")
# kernel-name fragments -> group, first match wins (lower case)
KERNEL_GROUPS = (
    ("convolution", ("conv", "implicit_gemm", "xmma", "cudnn", "sm90_", "wgrad", "dgrad", "fprop", "gemm", "cutlass")),
    ("normalisation", ("norm", "reduce", "welford")),
    ("copies / concatenation / padding", ("cat", "copy", "pad", "memcpy", "memset", "fill", "transpose", "permute")),
    ("upsampling", ("upsample", "nearest", "interp")),
    ("element-wise", ("elementwise", "vectorized", "silu", "mul", "add", "triton")),
)


def build_vae(args, device: torch.device, dtype: torch.dtype):
    from diffusers import AutoencoderKLWan

    if args.tiny:
        kwargs = e2e.WAN22_VAE_TINY if args.vae == "wan22" else dict(
            base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, attn_scales=[],
            temperal_downsample=[False, True, True])
    else:
        kwargs = e2e.WAN22_VAE if args.vae == "wan22" else {}  # diffusers' defaults: the Wan2.1 VAE
    torch.manual_seed(args.seed)
    vae = AutoencoderKLWan(**kwargs).to(device=device, dtype=dtype).eval().requires_grad_(False)
    return vae


def latent_for(vae, args, device, dtype) -> torch.Tensor:
    spatial = 16 if args.vae == "wan22" else 8  # the toy VAEs too: three x2 stages (and a x2 patch)
    frames = (args.frames - 1) // 4 + 1
    shape = (1, vae.config.z_dim, frames, args.height // spatial, args.width // spatial)
    gen = torch.Generator(device="cpu").manual_seed(args.seed + 1)
    return torch.randn(shape, generator=gen).to(device=device, dtype=dtype)


def decode(vae, z: torch.Tensor, fastdit: str | None = None) -> torch.Tensor:
    """``vae.decode(z).sample``, or fastdit's decode as the variant ``fastdit`` names it
    (``fastdit[-channels-last][-chunkN]``)."""
    if fastdit:
        from fastdit.models.wan.vae import decode as fastdit_decode

        chunk = int(fastdit.rsplit("-chunk", 1)[1]) if "-chunk" in fastdit else 1
        return fastdit_decode(vae, z, channels_last="channels-last" in fastdit, frames_per_chunk=chunk)
    with torch.no_grad():
        return vae.decode(z).sample


def count_flops(vae, z: torch.Tensor) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        vae.decode(z)
    return float(counter.get_total_flops())


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two decodes in [-1, 1] (peak-to-peak 2)."""
    mse = torch.mean((a.float() - b.float()) ** 2).item()
    return math.inf if mse == 0 else 10 * math.log10(4.0 / mse)


def norm_provider(vae, z: torch.Tensor) -> str:
    """The provider ``ops.channel_rms_norm`` resolves to for the decoder's first norm."""
    from fastdit.ops.registry import plan_for

    norm = rms_norms(vae)[0]
    x = torch.empty(1, norm.gamma.numel(), 1, z.shape[-2], z.shape[-1], dtype=z.dtype, device=z.device)
    return plan_for("channel_rms_norm", x, norm.gamma, None, scale=norm.scale, silu=True).provider.name


def rms_norms(vae) -> list:
    """The VAE's ``WanRMS_norm`` modules (diffusers' channel RMS norm)."""
    return [m for m in vae.modules() if type(m).__name__ == "WanRMS_norm"]


def set_conv_layout(vae, channels_last: bool) -> None:
    """Conv3d weights to NDHWC (``channels_last_3d``), Conv2d weights to NHWC, or both back."""
    for module in vae.modules():
        if isinstance(module, torch.nn.Conv3d):
            fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
        elif isinstance(module, torch.nn.Conv2d):
            fmt = torch.channels_last if channels_last else torch.contiguous_format
        else:
            continue
        module.weight.data = module.weight.data.contiguous(memory_format=fmt)


def time_variant(name: str, vae, z: torch.Tensor, args, device) -> tuple[dict, torch.Tensor]:
    previous_benchmark = torch.backends.cudnn.benchmark
    decoder_forward = vae.decoder.forward
    try:
        if name.endswith("cudnn-benchmark"):
            torch.backends.cudnn.benchmark = True
        elif name == "channels-last":
            set_conv_layout(vae, channels_last=True)
            z = z.contiguous(memory_format=torch.channels_last_3d)
        elif name == "compile":
            vae.decoder.forward = torch.compile(decoder_forward)
        elif name == "compile-norms":
            norms = rms_norms(vae)
            for module in norms:
                module.forward = torch.compile(module.forward, dynamic=True)
        fast = fastdit_spec(name)
        start = time.perf_counter()
        frames = decode(vae, z, fast)  # warm-up (compilation, autotuning)
        e2e.sync(device)
        warmup = time.perf_counter() - start
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        times = []
        for _ in range(args.runs):
            e2e.sync(device)
            start = time.perf_counter()
            frames = decode(vae, z, fast)
            e2e.sync(device)
            times.append(time.perf_counter() - start)
        peak = torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None
        row = {"s": statistics.median(times), "times_s": times, "warmup_s": warmup, "peak_gb": peak}
        if fast:
            row["norm_provider"] = norm_provider(vae, z)
        return row, frames
    finally:
        torch.backends.cudnn.benchmark = previous_benchmark
        vae.decoder.forward = decoder_forward
        if name == "compile-norms":
            for module in rms_norms(vae):
                module.__dict__.pop("forward", None)  # the class's forward again
        if name == "channels-last":
            set_conv_layout(vae, channels_last=False)


FRAMES_WAYS = ("diffusers-postprocess", "pageable", "frames-array", "frames-array-held", "to-cpu-bf16")


def frames_way(way: str, video: torch.Tensor, processor):
    """The decode stage's last part, ``video [1, 3, F, H, W]`` -> numpy ``[F, H, W, 3]``:
    diffusers' ``postprocess_video`` (bf16 to the CPU, converted there); converted on the GPU
    and the float32 copied to pageable memory; fastdit's ``stages.frames_array`` (the same into
    pinned memory; ``-held``: every result kept, so each call allocates new pinned memory, as
    when a caller keeps its videos); the bare bf16 copy to the CPU."""
    from fastdit.pipelines.stages import frames_array

    if way == "diffusers-postprocess":
        return processor.postprocess_video(video, output_type="np")[0]
    if way.startswith("frames-array"):
        return frames_array(video, processor)
    if way == "to-cpu-bf16":
        return video.cpu()
    return (video[0] * 0.5 + 0.5).clamp(0, 1).permute(1, 2, 3, 0).float().contiguous().cpu().numpy()


# the decoder's full-resolution causal convolution: one 4-frame chunk (+ 2 cached frames) at
# 96 channels; (C_in, C_out, bias) variants: as it is, without the bias (PyTorch adds a cuDNN
# convolution's bias in a separate broadcast pass), and with channels padded to 128 (whether
# cuDNN then picks a Hopper kernel instead of the sm80 256x32 tile h200-run15 showed)
CONV_VARIANTS = ((96, 96, True), (96, 96, False), (96, 128, False), (128, 128, False), (192, 192, False))


def time_convs(height: int, width: int, runs: int, device, dtype) -> dict:
    """Seconds and TFLOP/s of one channels-last 3x3x3 ``F.conv3d`` per :data:`CONV_VARIANTS`
    (the 192-channel row at half the resolution, the next decoder level)."""
    import torch.nn.functional as F

    rows = {}
    for c_in, c_out, bias in CONV_VARIANTS:
        h, w = (height, width) if c_in < 192 else (height // 2, width // 2)
        x = torch.randn(1, c_in, 6, h, w, device=device, dtype=dtype).contiguous(
            memory_format=torch.channels_last_3d)
        weight = (torch.randn(c_out, c_in, 3, 3, 3, device=device, dtype=dtype) * 0.02).contiguous(
            memory_format=torch.channels_last_3d)
        b = torch.randn(c_out, device=device, dtype=dtype) if bias else None
        run = lambda: F.conv3d(x, weight, b, 1, (0, 1, 1))  # noqa: E731
        run()
        times = []
        for _ in range(max(runs, 5)):
            e2e.sync(device)
            start = time.perf_counter()
            run()
            e2e.sync(device)
            times.append(time.perf_counter() - start)
        s = statistics.median(times)
        flops = 2 * (c_out * 4 * h * w) * (c_in * 27)
        rows[f"{c_in}->{c_out}{'+bias' if bias else ''}"] = {"s": s, "tflops": flops / s / 1e12,
                                                            "useful_tflops": flops * min(c_out, 96) / c_out
                                                            * min(c_in, 96) / c_in / s / 1e12}
    return rows


def time_frames(video: torch.Tensor, runs: int, device) -> dict:
    """Seconds (median of ``runs`` after one warm-up) of each :data:`FRAMES_WAYS` on one video."""
    from diffusers.video_processor import VideoProcessor

    processor = VideoProcessor(vae_scale_factor=8)
    rows = {}
    for way in FRAMES_WAYS:
        held = [frames_way(way, video, processor)]
        times = []
        for _ in range(runs):
            e2e.sync(device)
            start = time.perf_counter()
            frames = frames_way(way, video, processor)
            e2e.sync(device)
            times.append(time.perf_counter() - start)
            if way.endswith("-held"):
                held.append(frames)
        rows[way] = {"s": statistics.median(times), "times_s": times}
        del held, frames
    return rows


LAYOUT_OPS = ("add", "mul", "cat", "clone", "copy_", "constant_pad_nd", "convolution", "upsample_nearest2d",
              "clamp")


def _layout(t: torch.Tensor) -> str:
    """``CL`` channels-last (NHWC / NDHWC), ``C`` contiguous, both, or ``other`` (a strided view)."""
    if t.dim() not in (4, 5):
        return f"{t.dim()}d"
    cl = t.is_contiguous(memory_format=torch.channels_last_3d if t.dim() == 5 else torch.channels_last)
    return ("CL" if cl else "") + ("C" if t.is_contiguous() else "") or "other"


def layouts(vae, z: torch.Tensor, fast: str | None) -> list[dict]:
    """The memory layouts each element-wise / copy / convolution op of one decode reads and
    writes, counted with the bytes it writes (which ops mix layouts: TensorIterator runs those
    without vectorisation, and layout changes are copies)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    seen: dict = {}

    class Spy(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            name = func.overloadpacket.__name__
            if name in LAYOUT_OPS:
                inputs = list(args[0]) if name == "cat" else [a for a in args if isinstance(a, torch.Tensor)]
                key = (name, tuple(_layout(t) for t in inputs),
                       _layout(out) if isinstance(out, torch.Tensor) else None)
                count, written = seen.get(key, (0, 0))
                size = out.numel() * out.element_size() if isinstance(out, torch.Tensor) else 0
                seen[key] = (count + 1, written + size)
            return out

    with torch.no_grad(), Spy():
        decode(vae, z, fast)
    rows = [{"op": k[0], "inputs": list(k[1]), "output": k[2], "calls": c, "written_gb": b / 1e9}
            for k, (c, b) in seen.items()]
    return sorted(rows, key=lambda r: -r["written_gb"])


def fastdit_spec(variant: str) -> str | None:
    """What :func:`decode` takes for a variant: its ``fastdit[-channels-last][-chunkN]`` part,
    None (``vae.decode``) for the others."""
    return variant.removesuffix("-cudnn-benchmark") if variant.startswith("fastdit") else None


#: the variants :func:`decode` runs without a set-up (what ``--profile-variant`` and
#: ``--layouts`` take)
DIRECT_VARIANTS = tuple(v for v in VARIANTS if v == "eager" or (v.startswith("fastdit") and
                                                               not v.endswith("-cudnn-benchmark")))


def profile_decode(vae, z: torch.Tensor, device, fast: str | None = None) -> dict:
    """One profiled decode (``fast`` as :func:`decode` takes it): kernel time by group, the top
    kernels."""
    kernels = kernel_seconds(profiled(lambda: decode(vae, z, fast), device), device)
    groups = grouped(kernels, KERNEL_GROUPS)
    total = sum(groups.values())
    top = sorted(kernels.items(), key=lambda kv: -kv[1])[:25]
    return {"kernel_s": total, "groups_s": groups,
            "groups_share": {k: v / total for k, v in groups.items()} if total else {},
            "top_kernels": [{"name": n[:160], "s": s} for n, s in top],
            "source": "GPU kernels (device time)" if device.type == "cuda" else "CPU aten ops (self time)"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None)
    parser.add_argument("--vae", choices=("wan21", "wan22"), default="wan21")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"any of {', '.join(VARIANTS)}")
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--profile-variant", default=None, choices=DIRECT_VARIANTS,
                        help="also profile this variant's decode (kernel groups), after the variants")
    parser.add_argument("--layouts", default=None, choices=DIRECT_VARIANTS,
                        help="also count the memory layouts the ops of this variant's decode read and write")
    parser.add_argument("--conv-sweep", action="store_true",
                        help="also time the full-resolution convolution with and without bias and padded channels")
    parser.add_argument("--frames-stage", action="store_true",
                        help="also time the video -> numpy frames conversion ways (FRAMES_WAYS)")
    parser.add_argument("--tiny", action="store_true", help="toy VAE on the CPU (seconds)")
    args = parser.parse_args(argv)
    if args.tiny:
        args.height, args.width, args.frames, args.runs = 32, 32, 9, 1
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    dtype = torch.float32 if args.tiny else torch.bfloat16
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")

    report = {"benchmark": "vae", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "torch": torch.__version__, "gpu": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
              "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
              "vae": args.vae, "dtype": str(dtype), "video": f"{args.width}x{args.height}x{args.frames}",
              "variants": {}}

    def save() -> None:
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(report, indent=2))

    vae = build_vae(args, device, dtype)
    z = latent_for(vae, args, device, dtype)
    report["latent"] = list(z.shape)
    report["flops"] = count_flops(vae, z)
    print(f"[vae] {args.vae} decode of {list(z.shape)}: {report['flops'] / 1e12:.1f} TFLOP", flush=True)
    save()
    if not args.no_profile:  # first: the compile variants at the end may run into a time cap
        decode(vae, z)  # warm-up (cuDNN plans) outside the profile
        report["profile_eager"] = profile_decode(vae, z, device)
        print("[vae] eager profile: " + json.dumps({k: round(v, 3) for k, v in
                                                    report["profile_eager"]["groups_s"].items()}), flush=True)
        save()
    reference = None
    for name in names:
        try:
            row, frames = time_variant(name, vae, z, args, device)
            if reference is None and name == "eager":
                reference = frames
            if reference is not None:
                row["max_abs_vs_eager"] = (frames.float() - reference.float()).abs().max().item()
                row["psnr_vs_eager_db"] = psnr(frames, reference)
            row["tflops"] = report["flops"] / row["s"] / 1e12
        except Exception as exc:  # noqa: BLE001 - reported, the other variants still run
            row = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-3000:]}
        report["variants"][name] = row
        print(f"[vae] {name}: " + json.dumps({k: v for k, v in row.items() if k in ("s", "tflops", "peak_gb",
                                               "psnr_vs_eager_db", "error")}), flush=True)
        save()
    if args.conv_sweep:
        report["conv_sweep"] = time_convs(args.height, args.width, args.runs, device, dtype)
        print("[vae] conv sweep: " + json.dumps({k: (round(v["s"] * 1e3, 3), round(v["tflops"]))
                                                 for k, v in report["conv_sweep"].items()}), flush=True)
        save()
    if args.frames_stage:
        video = decode(vae, z)
        report["frames_stage"] = time_frames(video, max(args.runs, 3), device)
        print("[vae] frames stage: " + json.dumps({k: round(v["s"], 4) for k, v in report["frames_stage"].items()}),
              flush=True)
        save()
    if args.layouts:
        report["layouts"] = {"variant": args.layouts, "ops": layouts(vae, z, fastdit_spec(args.layouts))}
        for row in report["layouts"]["ops"][:20]:
            print(f"[vae] layouts {row['op']:20s} {','.join(row['inputs']):18s} -> {row['output']}: "
                  f"{row['calls']} calls, {row['written_gb']:.2f} GB written", flush=True)
        save()
    if args.profile_variant:
        fast = fastdit_spec(args.profile_variant)
        decode(vae, z, fast)  # warm-up outside the profile
        found = report["profile_variant"] = {"variant": args.profile_variant, **profile_decode(vae, z, device, fast)}
        print(f"[vae] {args.profile_variant} profile: " + json.dumps({k: round(v, 3) for k, v in
                                                                     found["groups_s"].items()}), flush=True)
        for row in found["top_kernels"][:12]:
            print(f"    {row['s'] * 1e3:8.2f} ms  {row['name'][:120]}", flush=True)
        save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
