"""``fastdit generate``.

Every check a user can fail (sizes, frames, steps, guidance, model folder, weights headers,
image, output path) runs before the model is loaded; the video is written to a temporary
file and renamed at the end, so an error or Ctrl-C leaves no partial output.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from fastdit.cli import UsageError, parallel
from fastdit.pipelines.result import _umask

log = logging.getLogger("fastdit")

DTYPES = {"bf16": "bfloat16", "bfloat16": "bfloat16", "fp16": "float16", "float16": "float16",
          "half": "float16", "fp32": "float32", "float32": "float32", "float": "float32"}


# ---------------------------------------------------------------------------------------
# fastdit generate
# ---------------------------------------------------------------------------------------
def add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="generate a video from a prompt (and an image)",
                       description="Generate a video with a diffusers-format Wan model folder. Unset "
                                   "sizes, frames, steps and guidance come from the model's defaults.")
    p.add_argument("--model", required=True, help="model folder (diffusers format) or Hub id")
    p.add_argument("--prompt", required=True, help="what the video shows")
    p.add_argument("--negative-prompt", default=None, help="what it should not show")
    p.add_argument("--image", default=None, help="first frame for image-to-video models (I2V, TI2V)")
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--num-frames", type=int, default=None, help="4k+1 frames (81 for 5 s at 16 fps)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps")
    p.add_argument("--guidance-scale", type=float, default=None, help="<= 1 turns guidance off")
    p.add_argument("--guidance-scale-2", type=float, default=None,
                   help="guidance of the low-noise expert (Wan2.2 A14B)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-sequence-length", type=int, default=512)
    p.add_argument("--device", default=None, help="cuda, cuda:1, cpu, ... (default: this machine's GPU)")
    p.add_argument("--dtype", default=None, choices=sorted(DTYPES),
                   help="default: bf16 on a GPU, fp32 on the CPU")
    p.add_argument("--scheduler", default="unipc", choices=("unipc", "euler"))
    p.add_argument("--flow-shift", type=float, default=None, help="override the checkpoint's flow shift")
    p.add_argument("--offload", default="auto", choices=("auto", "none", "experts", "model"),
                   help="keep idle components in CPU memory (auto: when the GPU is short of memory)")
    p.add_argument("--vae-tiling", action="store_true", help="decode in tiles (less memory)")
    p.add_argument("--fps", type=int, default=None, help="default: the model's")
    p.add_argument("--output", "-o", required=True, help="the video to write (.mp4)")
    p.add_argument("--save-frames", default=None, metavar="DIR", help="also write the frames as PNGs")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    parallel.add_parallel_arguments(p)  # --gpus, --parallel, --all-ranks
    p.set_defaults(func=cmd_generate)


def _check_output(path: Path) -> Path:
    from fastdit.pipelines.result import VIDEO_SUFFIXES

    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise UsageError(f"output must end in {', '.join(VIDEO_SUFFIXES)}: {path}")
    if path.is_dir():
        raise UsageError(f"output {path} is a folder")
    _check_writable_dir(path.parent, what=f"output {path}")
    return path


def _check_writable_dir(folder: Path, what: str) -> None:
    folder = folder if str(folder) else Path(".")
    if not folder.exists():
        raise UsageError(f"cannot write {what}: folder {folder} does not exist")
    if not folder.is_dir():
        raise UsageError(f"cannot write {what}: {folder} is not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".fastdit-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UsageError(f"cannot write {what}: {exc.strerror or exc}") from None


def _check_frames_dir(folder: Path) -> Path:
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"--save-frames {folder} exists and is not a folder")
    _check_writable_dir(folder if folder.exists() else folder.parent, what=f"frames to {folder}")
    return folder


def _parse_device(text: str | None):
    import torch

    if text is None:
        return None
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise UsageError(f"unknown device {text!r} (try cuda, cuda:0 or cpu)") from None
    if device.type != "cpu":
        backend = getattr(torch, device.type, None)
        available = getattr(backend, "is_available", lambda: False)
        if not available():
            raise UsageError(f"device {text!r} is not available on this machine")
        count = getattr(backend, "device_count", lambda: 1)()
        if device.index is not None and device.index >= count:
            raise UsageError(f"device {text!r} does not exist (this machine has {count})")
    return device


def _quiet_libraries(verbose: bool) -> None:
    """Keep the libraries' loading bars and warnings off the terminal (unless -v)."""
    if verbose:
        return
    from diffusers.utils import logging as dlogging
    from transformers.utils import logging as tlogging

    tlogging.set_verbosity_error()
    tlogging.disable_progress_bar()
    dlogging.set_verbosity_error()
    dlogging.disable_progress_bar()


def request_from_args(args: argparse.Namespace, image=None):
    """The :class:`~fastdit.pipelines.request.GenerationRequest` the flags describe."""
    from fastdit.pipelines.request import GenerationRequest

    return GenerationRequest(
        prompt=args.prompt, negative_prompt=args.negative_prompt, image=image, height=args.height,
        width=args.width, num_frames=args.num_frames, num_inference_steps=args.steps,
        guidance_scale=args.guidance_scale, guidance_scale_2=args.guidance_scale_2, seed=args.seed,
        max_sequence_length=args.max_sequence_length, fps=args.fps)


def cmd_generate(args: argparse.Namespace) -> int:
    import torch

    from fastdit.errors import InputError, first_line
    from fastdit.pipelines.request import resolve_request
    from fastdit.pipelines.spec import inspect_model
    from fastdit.pipelines.stages import load_image

    # 1. Everything that can be checked without loading the model.
    output = _check_output(Path(args.output))
    frames_dir = _check_frames_dir(Path(args.save_frames)) if args.save_frames else None
    if args.fps is not None and args.fps < 1:
        raise UsageError(f"--fps must be at least 1, got {args.fps}")
    if args.flow_shift is not None and args.flow_shift <= 0:
        raise UsageError(f"--flow-shift must be positive, got {args.flow_shift}")
    device = _parse_device(args.device)
    dtype = getattr(torch, DTYPES[args.dtype]) if args.dtype else None
    if device is not None and device.type == "cpu" and dtype is torch.float16:
        raise UsageError("fp16 is not supported on the CPU (use fp32 or bf16)")
    spec = inspect_model(args.model)
    image = None
    if args.image is not None:
        try:
            image = load_image(args.image)
        except FileNotFoundError:
            raise UsageError(f"cannot read image {args.image}: no such file") from None
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot read image {args.image}: {first_line(exc)}") from None
    request = request_from_args(args, image)
    try:
        resolved = resolve_request(spec, request)
    except InputError as exc:
        raise UsageError(_cli_words(str(exc))) from None
    layout = parallel.parallel_layout(args, spec, resolved, device)  # several GPUs: checked here
    if (code := parallel.start_ranks(args, layout)) is not None:  # --gpus N: N ranks run this
        return code

    # 2. Load and generate.
    _quiet_libraries(args.verbose)
    from fastdit.pipelines.wan import WanVideoPipeline

    log.info("loading %s", spec.describe())
    pipe = WanVideoPipeline.from_pretrained(spec, device=device, dtype=dtype, scheduler=args.scheduler,
                                            flow_shift=args.flow_shift, offload=args.offload,
                                            vae_tiling=args.vae_tiling, check_files=False,
                                            parallel=layout)
    log.info("loaded in %.1f s on %s (%s); generating %d frames at %dx%d, %d steps",
             pipe.load_seconds, pipe.device, str(pipe.dtype).replace("torch.", ""), resolved.num_frames,
             resolved.width, resolved.height, resolved.num_inference_steps)
    try:
        result = pipe.run(request, progress=not args.no_progress)
    except InputError as exc:
        raise UsageError(_cli_words(str(exc))) from None
    pipe.close()  # leaves the process group of a multi-GPU run
    if not pipe.is_writer:  # rank 0 writes the video and prints the summary
        return 0

    # 3. Write (temporary names, renamed at the end).
    fps = result.fps
    start = time.perf_counter()
    result.save(output, fps=fps)
    if frames_dir is not None:
        _save_frames_atomically(result, frames_dir)
    write_seconds = time.perf_counter() - start
    _print_summary(pipe, result, output, fps, frames_dir, write_seconds)
    return 0


def _cli_words(message: str) -> str:
    """Name the CLI flags in messages written for the Python API."""
    for api, flag in (("num_inference_steps", "--steps"), ("num_frames", "--num-frames"),
                      ("guidance_scale_2", "--guidance-scale-2"), ("guidance_scale", "--guidance-scale"),
                      ("max_sequence_length", "--max-sequence-length"), ("height", "--height"),
                      ("width", "--width"), ("an image is required", "an image is required (--image)")):
        message = message.replace(api, flag)
    return message


def _save_frames_atomically(result, frames_dir: Path) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=f".{frames_dir.name}.partial-", dir=frames_dir.parent))
    try:
        tmp.chmod(0o777 & ~_umask())
        result.save_frames(tmp)
        if frames_dir.exists():
            for old in frames_dir.glob("frame_*.png"):
                old.unlink()
            for new in tmp.iterdir():
                os.replace(new, frames_dir / new.name)
            tmp.rmdir()
        else:
            os.replace(tmp, frames_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _print_summary(pipe, result, output: Path, fps: int, frames_dir, write_seconds: float) -> None:
    t = result.timings
    frames = result.frames
    print(f"wrote {output}: {frames.shape[0]} frames, {frames.shape[2]}x{frames.shape[1]}, {fps} fps"
          + (f"; frames in {frames_dir}/" if frames_dir else ""))
    stages = [("load", pipe.load_seconds or 0.0)] + [(k, t[k]) for k in ("text", "image", "latents") if k in t]
    stages += [("denoise", t["denoise"]), ("decode", t.get("decode", 0.0)), ("write", write_seconds)]
    print("seconds: " + "  ".join(f"{name} {sec:.2f}" for name, sec in stages)
          + f"  | {t['per_step']:.3f} s/step over {result.settings['num_inference_steps']} steps")
    peak = result.peak_memory
    print("peak GPU memory: " + (f"{peak / 2**30:.2f} GiB" if peak is not None else "n/a (no GPU)"))
    sys.stdout.flush()
