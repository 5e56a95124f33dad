"""``fastdit generate``.

Every check a user can fail runs before the model is loaded: the output paths
(:mod:`fastdit.cli.output`), the device and dtype, the model folder (JSON values, weight
headers, every component's tensor names and shapes), the image, every request value, and the
size of the request against the model's range and an estimate of its time and memory on the
device (``--force`` skips that last one). The video and frames are written to hidden
temporaries and published together at the end, so an error, Ctrl-C or SIGTERM leaves no
partial output and an existing video untouched.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import time
from pathlib import Path

from fastdit.cli import UsageError, parallel
from fastdit.errors import DeviceError, ImageError, InputError, first_line

log = logging.getLogger("fastdit")

DTYPE_CHOICES = ("bf16", "bfloat16", "fp16", "float16", "half", "fp32", "float32", "float")
VAE_DECODER_CHOICES = ("auto", "diffusers", "fastdit", "fastdit-channels-last")  # LoadOptions.vae_decoder


# ---------------------------------------------------------------------------------------
# fastdit generate
# ---------------------------------------------------------------------------------------
def add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="generate a video from a prompt (and an image)",
                       description="Generate a video with a diffusers-format Wan model folder. Unset "
                                   "sizes, frames, steps and guidance come from the model's defaults.")
    p.add_argument("--model", required=True, help="model folder (diffusers format) or Hub id")
    p.add_argument("--prompt", required=True, help="what the video shows")
    p.add_argument("--negative-prompt", default=None, help="what it should not show (used with guidance)")
    p.add_argument("--image", default=None, help="first frame for image-to-video models (I2V, TI2V)")
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--num-frames", type=int, default=None, help="4k+1 frames (81 for 5 s at 16 fps)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps")
    p.add_argument("--guidance-scale", type=float, default=None, help="<= 1 turns guidance off")
    p.add_argument("--guidance-scale-2", type=float, default=None,
                   help="guidance of the low-noise expert (Wan2.2 A14B)")
    p.add_argument("--seed", type=int, default=0, help="an integer in [-2^63, 2^64)")
    p.add_argument("--max-sequence-length", type=int, default=512, help="text tokens (at most 512)")
    p.add_argument("--device", default=None, help="cuda, cuda:1, cpu, ... (default: this machine's GPU)")
    p.add_argument("--dtype", default=None, choices=DTYPE_CHOICES,
                   help="default: bf16 on a GPU, fp32 on the CPU")
    p.add_argument("--scheduler", default="unipc", choices=("unipc", "euler"))
    p.add_argument("--flow-shift", type=float, default=None, help="override the checkpoint's flow shift")
    p.add_argument("--offload", default="auto", choices=("auto", "none", "experts", "model", "blocks"),
                   help="keep idle components in CPU memory (auto: when the GPU is short of memory)")
    p.add_argument("--vae-tiling", action="store_true", help="decode in tiles (less memory)")
    p.add_argument("--vae-decoder", default="auto", choices=VAE_DECODER_CHOICES,
                   help="the VAE decode: diffusers' vae.decode, or fastdit's on the same modules (a fused "
                        "norm + SiLU op, padding-free causal convolutions; equal to rounding), optionally "
                        "with NDHWC activations; auto (default): fastdit-channels-last on NVIDIA GPUs, "
                        "diffusers elsewhere")
    # memory budget and low-memory runtime (fastdit.pipelines.memory, fastdit.runtime)
    p.add_argument("--max-gpu-memory", default=None, metavar="SIZE", type=_budget,
                   help="GPU memory budget (24GB, 16GiB): plan which transformer blocks stream from host "
                        "memory, where the encoders run and whether the VAE tiles (default: free memory)")
    p.add_argument("--weights", default="dense", choices=("dense", "fp8"),
                   help="fp8: store the transformer blocks' weights in e4m3 with per-channel scales "
                        "(half the memory and copies; changes the output slightly)")
    p.add_argument("--text-encoder-device", default="auto", choices=("auto", "device", "cpu"),
                   help="where the text (and CLIP) encoder runs; auto: the plan's choice")
    p.add_argument("--prefetch", type=int, default=None, metavar="N",
                   help="streamed blocks copied ahead of the one computing (default: the plan's)")
    p.add_argument("--quantize", default="none", metavar="PRESET",
                   help="precision of the transformer: none (default: exact, the reference "
                        "output) or fp8 (8-bit self-attention, fp8 block linear layers; "
                        "approximate, faster); per-part overrides as PRESET:PART=VALUE,... "
                        "(e.g. fp8:attention=exact)")
    p.add_argument("--fps", type=int, default=None, help="1 to 1000 (default: the model's)")
    p.add_argument("--output", "-o", required=True, help="the video to write (.mp4, .mov, .mkv)")
    p.add_argument("--save-frames", default=None, metavar="DIR", help="also write the frames as PNGs")
    p.add_argument("--force", action="store_true",
                   help="run a request beyond the model's range or the device estimate of time and memory")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_cache_arguments(p)
    add_variant_arguments(p)
    parallel.add_parallel_arguments(p)  # --gpus, --parallel, --all-ranks
    p.set_defaults(func=cmd_generate)


# ---- LoRAs, distilled transformers, few-step sampling (docs/lora.md) ----------------------
def add_variant_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("LoRAs, distilled transformers and few-step sampling (docs/lora.md)")
    g.add_argument("--lora", action="append", default=[], metavar="[high:|low:]PATH[:SCALE]",
                   help="a LoRA file and its scale (default 1); repeat to stack; low: sends it to "
                        "the low-noise expert of Wan2.2 A14B")
    g.add_argument("--lora-2", action="append", default=[], metavar="PATH[:SCALE]",
                   help="a LoRA for the second (low-noise) expert of Wan2.2 A14B; repeatable")
    g.add_argument("--lora-mode", default="merge", choices=("merge", "runtime"),
                   help="merge into the weights (default, no cost per step) or keep as side "
                        "branches (runtime)")
    g.add_argument("--lora-strict", default="on", choices=("on", "off"),
                   help="on: a LoRA key that matches no weight is an error; off: skipped with a warning")
    g.add_argument("--transformer", default=None, metavar="PATH",
                   help="a single .safetensors transformer (e.g. a LightX2V distilled model) "
                        "replacing the model folder's")
    g.add_argument("--transformer-2", default=None, metavar="PATH",
                   help="the same for the second expert of Wan2.2 A14B")
    g.add_argument("--preset", default=None, metavar="NAME",
                   help="few-step preset: lightx2v-4step or lightning-4step (timesteps, shift, "
                        "no guidance, expert switch)")
    g.add_argument("--timesteps", default=None, metavar="T1,T2,...",
                   help="few-step Euler on these timesteps, e.g. 1000,750,500,250 (shift: "
                        "--flow-shift, default 5)")
    g.add_argument("--boundary-step", type=int, default=None, metavar="N",
                   help="few-step schedule on Wan2.2 A14B: the first step of the low-noise expert")


def variant_options(args: argparse.Namespace) -> dict:
    """The :class:`~fastdit.pipelines.loading.LoadOptions` fields of the flags above."""
    return dict(loras=tuple(args.lora), loras_2=tuple(args.lora_2), lora_mode=args.lora_mode,
                lora_strict=args.lora_strict == "on", transformer=args.transformer,
                transformer_2=args.transformer_2, preset=args.preset, timesteps=args.timesteps,
                boundary_step=args.boundary_step)


def _print_variant(pipe) -> None:
    for line in pipe.variant.summary():
        print(line)
    sys.stdout.flush()


def add_cache_arguments(p: argparse.ArgumentParser) -> None:
    """Step caching and the guidance shortcuts: opt-in, they change the output (docs/caching.md)."""
    from fastdit.cache.config import policy_help  # no torch import: --help stays fast

    g = p.add_argument_group("step caching and guidance shortcuts (change the output; docs/caching.md)")
    g.add_argument("--cache", default=None, metavar="NAME[:k=v,...]",
                   help="reuse the transformer's residual on steps where its input barely moved, e.g. "
                        "teacache:threshold=0.08 (threshold=0 never reuses; none: off). "
                        + policy_help(brief=True))
    g.add_argument("--guidance-until", type=float, default=None, metavar="FRACTION",
                   help="classifier-free guidance on the first FRACTION of the steps only, the prompt "
                        "alone after (0.8: the last 20%% of the steps run one branch)")
    g.add_argument("--cfg-zero-star", action="store_true",
                   help="CFG-Zero*: zero velocity on the first steps (no forward) and the optimised "
                        "guidance scale after")
    g.add_argument("--zero-init-steps", type=int, default=None, metavar="N",
                   help="CFG-Zero*: how many first steps predict zero velocity (default 1; 0: only the "
                        "optimised scale)")


def _quiet_libraries(verbose: bool) -> None:
    """Keep the libraries' loading bars and warnings off the terminal (unless -v)."""
    if not verbose:
        from fastdit.pipelines.loading import quiet_libraries

        quiet_libraries()


def request_from_args(args: argparse.Namespace, image=None):
    """The :class:`~fastdit.pipelines.request.GenerationRequest` the flags describe."""
    from fastdit.pipelines.request import GenerationRequest

    return GenerationRequest(
        prompt=args.prompt, negative_prompt=args.negative_prompt, image=image, height=args.height,
        width=args.width, num_frames=args.num_frames, num_inference_steps=args.steps,
        guidance_scale=args.guidance_scale, guidance_scale_2=args.guidance_scale_2, seed=args.seed,
        max_sequence_length=args.max_sequence_length, fps=args.fps, force=args.force,
        cache=args.cache, guidance_until=args.guidance_until, cfg_zero_star=args.cfg_zero_star,
        zero_init_steps=args.zero_init_steps)


def read_image(text: str):
    """The ``--image`` file as RGB; :class:`ImageError` naming the file."""
    from fastdit.pipelines.stages import load_image

    try:
        return load_image(text)
    except FileNotFoundError:
        raise ImageError(f"cannot read image {text}: no such file") from None
    except (OSError, ValueError) as exc:
        raise ImageError(f"cannot read image {text}: {first_line(exc)}") from None


def precision_from_args(args: argparse.Namespace):
    """The :class:`~fastdit.quant.config.PrecisionConfig` of ``--quantize`` (the text form,
    per-part overrides included: ``fp8:attention=exact``); a bad value is a usage error."""
    from fastdit.quant.config import parse_quantize

    try:
        return parse_quantize(args.quantize)
    except InputError as exc:
        raise UsageError(f"--quantize: {exc}".replace("quantize: quantize", "quantize")) from None


def cmd_generate(args: argparse.Namespace) -> int:
    """The command; a user error's message names the CLI flags, not the API's arguments."""
    try:
        return _generate(args)
    except (InputError, DeviceError) as exc:
        if isinstance(exc, ImageError):  # names a file: leave its words alone
            raise
        raise _with_cli_words(exc) from None


def _generate(args: argparse.Namespace) -> int:
    from fastdit.cli.output import check_frames_dir, check_output, write_outputs
    from fastdit.pipelines.limits import device_budget
    from fastdit.pipelines.loading import LoadOptions, check_flow_shift, resolve_device, resolve_dtype
    from fastdit.pipelines.preflight import check_components
    from fastdit.pipelines.request import resolve_request
    from fastdit.pipelines.spec import inspect_model
    from fastdit.pipelines.variants import plan_variant

    # 1. Everything that can be checked without loading the model.
    output = check_output(args.output)
    frames_dir = check_frames_dir(args.save_frames, output) if args.save_frames is not None else None
    if args.flow_shift is not None:
        check_flow_shift(args.flow_shift)
    device = resolve_device(args.device)
    precision = precision_from_args(args)
    dtype = resolve_dtype(args.dtype, device)
    spec = inspect_model(args.model)  # JSON values and weight headers
    spec, variant = plan_variant(spec, LoadOptions.from_kwargs(flow_shift=args.flow_shift,
                                                               **variant_options(args)))
    spec.device_budget = device_budget(spec, device, dtype, offload=args.offload, vae_tiling=args.vae_tiling)
    image = read_image(args.image) if args.image is not None else None
    request = request_from_args(args, image)
    resolved = resolve_request(spec, request, notify=None)  # errors now; notices when it runs
    _quiet_libraries(args.verbose)  # the component checks build the libraries' models (on meta)
    check_components(spec)  # every tensor name and shape
    layout = parallel.parallel_layout(args, spec, resolved, device)  # several GPUs: checked here
    if (code := parallel.start_ranks(args, layout)) is not None:  # --gpus N: N ranks run this
        return code

    # 2. Load and generate.
    from fastdit.pipelines.wan import WanVideoPipeline

    log.info("loading %s", spec.describe())
    pipe = WanVideoPipeline.from_pretrained(spec, device=device, dtype=dtype, scheduler=args.scheduler,
                                            flow_shift=args.flow_shift, offload=args.offload,
                                            vae_tiling=args.vae_tiling, vae_decoder=args.vae_decoder,
                                            check_files=False,
                                            variant=variant, **variant_options(args),
                                            **memory_options(args, resolved), parallel=layout,
                                            quantize=precision)
    log.info("loaded in %.1f s on %s (%s); generating %d frames at %dx%d, %d steps",
             pipe.load_seconds, pipe.device, str(pipe.dtype).replace("torch.", ""), resolved.num_frames,
             resolved.width, resolved.height, resolved.num_inference_steps)
    result = pipe.run(request, progress=not args.no_progress)
    pipe.close()  # leaves the process group of a multi-GPU run
    if not pipe.is_writer:  # rank 0 writes the video and prints the summary
        return 0

    # 3. Write (hidden temporaries, published together at the end).
    fps = result.video_fps()
    start = time.perf_counter()
    write_outputs(result.frames, output, fps, frames_dir)
    _print_summary(pipe, result, output, fps, frames_dir, time.perf_counter() - start,
                   default_fps=args.fps is None)
    _print_variant(pipe)
    return 0


def _precision_line(pipe) -> str:
    """The summary's precision line: the setting, and for a quantised model its providers and
    the transformers' weight memory."""
    from fastdit.quant.weights import format_bytes

    line = pipe.precision.describe()
    reports = getattr(pipe, "precision_reports", [])
    if reports:
        providers = reports[0].attention_providers
        if providers:
            line += f"; self-attention provider {' > '.join(providers)}"
        line += f"; transformer weights {format_bytes(sum(r.weight_bytes for r in reports))}"
    return line


def _budget(text: str) -> str:
    """``--max-gpu-memory``: checked while parsing (one line, exit 2), passed on as given."""
    from fastdit.errors import UserError
    from fastdit.pipelines.memory import parse_size

    try:
        parse_size(text, "--max-gpu-memory")
    except UserError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def memory_options(args: argparse.Namespace, resolved) -> dict:
    """The memory flags as load options; the plan holds the requested video."""
    return {"max_gpu_memory": args.max_gpu_memory, "weights": args.weights,
            "text_encoder_device": args.text_encoder_device, "prefetch": args.prefetch,
            "plan_video": (resolved.height, resolved.width, resolved.num_frames)}
# API argument -> CLI flag, in the messages of user errors
CLI_WORDS = (("num_inference_steps", "--steps"), ("num_frames", "--num-frames"),
             ("guidance_scale_2", "--guidance-scale-2"), ("guidance_scale", "--guidance-scale"),
             ("max_sequence_length", "--max-sequence-length"), ("negative_prompt", "--negative-prompt"),
             ("prompt", "--prompt"), ("height", "--height"), ("width", "--width"), ("seed", "--seed"),
             ("fps", "--fps"), ("flow_shift", "--flow-shift"), ("dtype", "--dtype"),
             ("force=True", "--force"), ("guidance_until", "--guidance-until"),
             ("cfg_zero_star", "--cfg-zero-star"), ("zero_init_steps", "--zero-init-steps"))


def _cli_words(message: str) -> str:
    """Name the CLI flags in messages written for the Python API (whole words only)."""
    for api, flag in CLI_WORDS:
        message = re.sub(rf"(?<![\w-]){re.escape(api)}(?![\w=])" if "=" not in api else re.escape(api),
                         flag, message)
    return message.replace("an image is required", "an image is required (--image)")


def _with_cli_words(exc: InputError | DeviceError) -> InputError | DeviceError:
    try:
        return type(exc)(_cli_words(str(exc)))
    except TypeError:  # an error type with another constructor
        return UsageError(_cli_words(str(exc)))


def _print_summary(pipe, result, output: Path, fps, frames_dir, write_seconds: float,
                   default_fps: bool = False) -> None:
    t = result.timings
    frames = result.frames
    rate = f"{fps:g} fps" + (" (the model's default)" if default_fps else "")
    print(f"wrote {output}: {frames.shape[0]} frames, {frames.shape[2]}x{frames.shape[1]}, {rate}"
          + (f"; frames in {frames_dir}/" if frames_dir else ""))
    stages = [("load", pipe.load_seconds or 0.0)] + [(k, t[k]) for k in ("text", "image", "latents") if k in t]
    stages += [("denoise", t["denoise"]), ("decode", t.get("decode", 0.0)), ("write", write_seconds)]
    print("seconds: " + "  ".join(f"{name} {sec:.2f}" for name, sec in stages)
          + f"  | {t['per_step']:.3f} s/step over {result.settings['num_inference_steps']} steps")
    peak = result.peak_memory
    print("peak GPU memory: " + (f"{peak / 2**30:.2f} GiB" if peak is not None else "n/a (no GPU)"))
    print(_precision_line(pipe))
    if "cache" in result.stats:  # forwards run and reused, per branch and expert
        print(result.stats["cache"]["summary"])
    if result.settings.get("guidance_until") is not None or result.settings.get("cfg_zero_star"):
        print("guidance: " + "; ".join(result.settings["guidance"]))
    sys.stdout.flush()
