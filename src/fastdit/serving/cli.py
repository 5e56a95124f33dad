"""``fastdit serve``: the argparse side (``add_serve`` registers it, ``cmd_serve`` runs it).

The lead registers :func:`add_serve` in the ``cli`` package (phase 2); until then
``python -m fastdit.serving --model PATH`` runs the same command.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fastdit.errors import UserError
from fastdit.serving.options import LOAD_OPTIONS, ServeConfig, default_state_dir


def add_serve(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("serve", help="serve a model over HTTP (OpenAI-style video API, job queue, web page)",
                       description="Serve a Wan model: POST /v1/videos queues a job, one worker process per "
                                   "device runs the jobs, the web page is at /. Binds 127.0.0.1 unless --host.")
    add_serve_arguments(p)
    p.set_defaults(func=cmd_serve)
    return p


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model folder (diffusers format) or Hub id")
    p.add_argument("--devices", default=None,
                   help="worker devices: '0,1' (GPU indices), 'cuda:0,cuda:1', 'cpu' (default: every visible "
                        "GPU, else one CPU worker)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (0: any free one; see server.json)")
    p.add_argument("--state-dir", default=None,
                   help="jobs database and videos (default: ~/.local/share/fastdit/serve, under $XDG_DATA_HOME)")
    p.add_argument("--api-key", default=None, help="bearer token clients must send (default: $FASTDIT_API_KEY; "
                                                   "none: no authentication)")
    p.add_argument("--model-id", default=None, help="the model id the API reports (default: the model's name)")
    p.add_argument("--max-queue", type=int, default=256, help="queued jobs at most; more are answered 429")
    p.add_argument("--keep-hours", type=float, default=24.0,
                   help="finished jobs and their videos are deleted this long after they end (0: kept)")
    p.add_argument("--job-timeout", type=float, default=3600.0, help="seconds a job may run before it is failed")
    p.add_argument("--retries", type=int, default=1, help="runs again of a job whose worker died under it")
    p.add_argument("--max-body-bytes", type=int, default=16 * 2**20, help="request body limit")
    p.add_argument("--max-image-bytes", type=int, default=10 * 2**20, help="uploaded image limit")
    p.add_argument("--max-prompt-chars", type=int, default=4096, help="prompt length limit")
    p.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="allow browser calls from this origin (repeatable; default: none)")
    p.add_argument("--heartbeat-timeout", type=float, default=120.0,
                   help="a worker silent this long is killed and started again")
    p.add_argument("--cancel-grace", type=float, default=30.0,
                   help="seconds a worker has to stop a cancelled or timed-out job before it is killed")
    p.add_argument("--cpu-threads", type=int, default=None, help="torch threads of each CPU worker")
    for option in LOAD_OPTIONS:
        if option.kind == "flag":
            p.add_argument(option.flag, action="store_true", help=option.help)
        elif option.kind == "list":
            p.add_argument(option.flag, action="append", default=None, help=option.help)
        else:
            kind = {"float": float, "int": int}.get(option.kind, str)
            p.add_argument(option.flag, type=kind, default=option.default, choices=option.choices,
                           help=option.help)
    p.add_argument("--test-faults", action="store_true", help=argparse.SUPPRESS)  # tests: the `fault` field


def resolve_devices(text: str | None) -> tuple[str, ...]:
    """``--devices`` as torch device strings: one worker each."""
    import torch

    from fastdit.platforms import current_platform

    platform = current_platform()
    kind = platform.device_type
    count = platform.device_count() if kind != "cpu" else 0
    if text is None or text.strip().lower() in ("", "all"):
        return tuple(f"{kind}:{i}" for i in range(count)) or ("cpu",)
    devices = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        if item.isdigit():
            item = f"{kind}:{item}"
        try:
            device = torch.device(item)
        except (RuntimeError, ValueError):
            raise UserError(f"--devices: unknown device {item!r} (try 0,1 or cuda:0 or cpu)") from None
        if device.type != "cpu":
            if device.type != kind or count == 0:
                raise UserError(f"--devices: {item} is not available on this machine")
            if device.index is None:
                device = torch.device(kind, 0)
            if device.index >= count:
                raise UserError(f"--devices: {item} does not exist (this machine has {count})")
        devices.append(str(device))
    if not devices:
        raise UserError("--devices names no device")
    return tuple(devices)


def config_from_args(args: argparse.Namespace) -> ServeConfig:
    from fastdit.config import serve_api_key

    checks = [("--port", args.port, 0 <= args.port <= 65535), ("--max-queue", args.max_queue, args.max_queue >= 1),
              ("--keep-hours", args.keep_hours, args.keep_hours >= 0),
              ("--job-timeout", args.job_timeout, args.job_timeout > 0), ("--retries", args.retries, args.retries >= 0),
              ("--max-body-bytes", args.max_body_bytes, args.max_body_bytes >= 1024),
              ("--max-image-bytes", args.max_image_bytes, args.max_image_bytes >= 1),
              ("--max-prompt-chars", args.max_prompt_chars, args.max_prompt_chars >= 1),
              ("--heartbeat-timeout", args.heartbeat_timeout, args.heartbeat_timeout > 0),
              ("--cancel-grace", args.cancel_grace, args.cancel_grace > 0)]
    for flag, value, ok in checks:
        if not ok:
            raise UserError(f"{flag}: {value} is out of range")
    load_options = {}
    for option in LOAD_OPTIONS:
        value = getattr(args, option.flag.lstrip("-").replace("-", "_"))
        if value is not None and value is not False:
            if option.kind == "list":
                value = tuple(value)
            elif option.kind == "onoff":
                value = value == "on"
            load_options[option.keyword] = value
    if load_options.get("flow_shift") is not None and load_options["flow_shift"] <= 0:
        raise UserError(f"--flow-shift must be positive, got {load_options['flow_shift']}")
    devices = resolve_devices(args.devices)
    if load_options.get("dtype") in ("fp16", "float16", "half") and "cpu" in devices:
        raise UserError("fp16 is not supported on the CPU (use fp32 or bf16)")
    return ServeConfig(
        model=args.model, state_dir=Path(args.state_dir).expanduser() if args.state_dir else default_state_dir(),
        devices=devices, host=args.host, port=args.port, api_key=args.api_key or serve_api_key(),
        model_id=args.model_id, max_queue=args.max_queue, keep_hours=args.keep_hours,
        job_timeout_s=args.job_timeout, max_attempts=args.retries + 1, heartbeat_timeout_s=args.heartbeat_timeout,
        cancel_grace_s=args.cancel_grace, max_body_bytes=args.max_body_bytes, max_image_bytes=args.max_image_bytes,
        max_prompt_chars=args.max_prompt_chars, cors_origins=tuple(args.cors_origin), load_options=load_options,
        cpu_threads=args.cpu_threads, test_faults=args.test_faults,
        log_level="debug" if getattr(args, "verbose", False) else "info")


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the server until SIGINT/SIGTERM (exit 0); a bad option or model is a UserError (exit 2)."""
    from fastdit.serving.server import serve

    return serve(config_from_args(args))
