"""The HTTP front end: the OpenAI-style video routes, health, metrics and the web page.

Every refusal is an OpenAI-style error body ``{"error": {"message", "type", "param", "code"}}``
with a 4xx status; an internal error is a 500 with a one-line message (the traceback goes to
the server log, never into a response). No request value is ever used as a file path: videos
and uploads live under server-made names (``<job id>.mp4``, ``<job id>.png``) and job ids are
checked against :data:`~fastdit.serving.store.ID_PATTERN` before any lookup.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse

from fastdit.serving import metrics as metrics_text
from fastdit.serving.fields import FIELDS, Limits, RequestError, parse_fields, resolve_job
from fastdit.serving.guard import BodyTooLarge, Guard
from fastdit.serving.options import ServeConfig
from fastdit.serving.store import FINISHED, ID_PATTERN, Job, QueueFull, new_job_id, remove_job_files

log = logging.getLogger("fastdit.serving")

STATIC = Path(__file__).with_name("static")
PAGES = {"/": ("index.html", "text/html; charset=utf-8"), "/static/app.js": ("app.js", "text/javascript"),
         "/static/style.css": ("style.css", "text/css")}
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'self'; media-src 'self' blob:; img-src 'self' blob: data:; "
                                           "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
                "X-Frame-Options": "DENY", "Cache-Control": "no-cache"}
_ID = re.compile(ID_PATTERN)
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")


def error_response(status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                   code: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type, "param": param, "code": code}},
                        status_code=status, headers=headers)


def job_json(job: Job, model_id: str) -> dict[str, Any]:
    """A job as the OpenAI video object, plus fastdit's own fields."""
    r = job.request
    if job.status == "completed":
        progress = 100
    elif job.status == "in_progress" and job.steps_total:
        progress = int(99 * job.steps_done / job.steps_total)
    else:
        progress = 0
    fps = r.get("fps") or 16
    error = {"code": job.error_code, "message": job.error_message} if job.status == "failed" else None
    return {"id": job.id, "object": "video", "status": job.status, "progress": progress,
            "created_at": int(job.created_at), "completed_at": _int(job.completed_at),
            "expires_at": _int(job.expires_at), "model": model_id, "size": f"{r['width']}x{r['height']}",
            "seconds": f"{(r['num_frames'] - 1) / fps:g}", "error": error,
            "prompt": r["prompt"], "num_frames": r["num_frames"], "fps": fps, "seed": job.seed,
            "steps_done": job.steps_done, "steps_total": job.steps_total, "started_at": job.started_at,
            "attempts": job.attempts, "max_attempts": job.max_attempts, "timings": job.timings,
            "history": job.history}


def _int(value: float | None) -> int | None:
    return None if value is None else int(value)


def decode_image(data: bytes, max_pixels: int):
    """The uploaded bytes as an RGB PIL image; RequestError when they are not a sane image."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise RequestError("input_reference is an empty file", "input_reference")
    try:
        with Image.open(io.BytesIO(data)) as probe:
            kind, (width, height) = probe.format, probe.size
            if kind not in IMAGE_FORMATS:
                raise RequestError(f"input_reference must be a {', '.join(IMAGE_FORMATS)} image, got {kind}",
                                   "input_reference", "invalid_image")
            if width * height > max_pixels:
                raise RequestError(f"input_reference is {width}x{height}; this server takes at most "
                                   f"{max_pixels} pixels", "input_reference", "image_too_large")
            probe.verify()
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return im.convert("RGB")
    except RequestError:
        raise
    except UnidentifiedImageError:
        raise RequestError("input_reference is not an image (PNG, JPEG, WEBP, ...)", "input_reference",
                           "invalid_image") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise RequestError(f"input_reference is not a readable image: {str(exc)[:200]}", "input_reference",
                           "invalid_image") from None


def _save_png(image, path: Path) -> None:
    tmp = path.with_name(f".{path.stem}.partial.png")
    image.save(tmp, format="PNG")
    os.replace(tmp, path)


def _reject_nan(text: str):
    raise ValueError(f"{text} is not a number JSON allows")


def create_app(config: ServeConfig, spec, store, supervisor, metrics, *, model_id: str,
               lifespan=None) -> FastAPI:
    """The FastAPI application around a job store and a worker supervisor."""
    app = FastAPI(title="fastdit serve", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    limits = Limits(max_prompt_chars=config.max_prompt_chars)
    outputs, inputs = Path(config.outputs_dir), Path(config.inputs_dir)

    # ---- errors: always the OpenAI shape, never a traceback ------------------------------------
    @app.exception_handler(RequestError)
    async def _request_error(request: Request, exc: RequestError):
        return error_response(exc.status, exc.message, param=exc.param, code=exc.code)

    @app.exception_handler(BodyTooLarge)
    async def _too_large(request: Request, exc: BodyTooLarge):
        return error_response(413, str(exc), code="request_too_large")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        codes = {404: "not_found", 405: "method_not_allowed"}
        detail = exc.detail if isinstance(exc.detail, str) else "bad request"
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no route {request.method} {request.url.path[:100]}"
        return error_response(exc.status_code, detail, code=codes.get(exc.status_code, "bad_request"),
                              headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        return error_response(400, "malformed request", code="bad_request")

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception):
        log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
        return error_response(500, "internal server error (see the server log)", type="server_error",
                              code="internal_error")

    def _job_or_404(video_id: str) -> Job:
        job = store.get(video_id) if _ID.fullmatch(video_id) else None
        if job is None:
            raise RequestError(f"no video with id {video_id[:80]!r}", "video_id", "not_found", 404)
        return job

    # ---- the video routes -------------------------------------------------------------------
    @app.post("/v1/videos")
    async def create_video(request: Request):
        values, image_bytes = await _read_request(request, config)
        image = None
        if image_bytes is not None:
            image = await run_in_threadpool(decode_image, image_bytes, config.max_image_pixels)
        job_request = resolve_job(spec, values, has_image=image is not None, model_id=model_id, limits=limits)
        job_id = new_job_id()
        image_name = None
        if image is not None:
            image_name = f"{job_id}.png"
            await run_in_threadpool(_save_png, image, inputs / image_name)
        try:
            job = store.create(job_id, job_request, max_queue=config.max_queue, max_attempts=config.max_attempts,
                               image=image_name)
        except QueueFull:
            remove_job_files(outputs, inputs, job_id)
            return error_response(429, f"the queue is full ({config.max_queue} jobs waiting); try again later",
                                  type="rate_limit_error", code="queue_full", headers={"Retry-After": "10"})
        supervisor.notify()
        return JSONResponse(job_json(job, model_id))

    @app.get("/v1/videos")
    async def list_videos(request: Request):
        query = request.query_params
        unknown = sorted(set(query) - {"limit", "after", "order"})
        if unknown:
            raise RequestError(f"unknown query parameter {unknown[0][:40]!r} (known: limit, after, order)",
                               unknown[0][:40], "unknown_parameter")
        limit_text = query.get("limit", "20")
        if not re.fullmatch(r"\d{1,4}", limit_text) or not 1 <= int(limit_text) <= 100:
            raise RequestError(f"limit must be an integer from 1 to 100, got {limit_text[:20]!r}", "limit")
        order = query.get("order", "desc")
        if order not in ("asc", "desc"):
            raise RequestError(f"order must be 'asc' or 'desc', got {order[:20]!r}", "order")
        after = query.get("after")
        if after is not None and not _ID.fullmatch(after):
            raise RequestError(f"after must be a video id, got {after[:80]!r}", "after")
        try:
            jobs, more = store.list(int(limit_text), after, order)
        except KeyError:
            raise RequestError(f"no video with id {after!r}", "after", "not_found", 404) from None
        data = [job_json(j, model_id) for j in jobs]
        return JSONResponse({"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                             "last_id": data[-1]["id"] if data else None, "has_more": more})

    @app.get("/v1/videos/{video_id}")
    async def get_video(video_id: str):
        return JSONResponse(job_json(_job_or_404(video_id), model_id))

    @app.get("/v1/videos/{video_id}/content")
    async def video_content(video_id: str, request: Request):
        job = _job_or_404(video_id)
        variant = request.query_params.get("variant", "video")
        if variant != "video":
            raise RequestError(f"variant {variant[:40]!r} is not available (only 'video')", "variant")
        if job.status != "completed" or not job.output:
            raise RequestError(f"video {job.id} is {job.status}, not completed", "video_id", "video_not_ready", 409)
        path = outputs / job.output
        if not path.is_file():
            raise RequestError(f"the file of video {job.id} is gone", "video_id", "not_found", 404)
        return FileResponse(path, media_type="video/mp4", filename=f"{job.id}.mp4",
                            content_disposition_type="inline")

    @app.delete("/v1/videos/{video_id}")
    async def delete_video(video_id: str):
        job = _job_or_404(video_id)
        if job.status not in FINISHED:
            before = store.cancel(job.id)
            if before is not None and before.status not in FINISHED:
                metrics.finish("cancelled")
                if before.status == "in_progress":
                    supervisor.cancel(job.id)  # the worker stops before its next step, deletes the partial file
                else:
                    (inputs / f"{job.id}.png").unlink(missing_ok=True)
                return job_json(store.get(job.id) or before, model_id)
        store.delete(job.id)
        remove_job_files(outputs, inputs, job.id)
        return {"id": job.id, "object": "video.deleted", "deleted": True}

    # ---- the server ---------------------------------------------------------------------------
    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [model_json(spec, config, model_id)]}

    @app.get("/health")
    async def health():
        workers = supervisor.status()
        states = {w["state"] for w in workers}
        status = "ok" if "ready" in states or "busy" in states else "starting"
        if "failed" in states:
            status = "degraded"
        return {"status": status, "model": model_id, "workers": workers,
                "queue_depth": store.counts()["queued"]}

    @app.get("/metrics")
    async def prometheus():
        text = metrics_text.render(metrics, store.counts(), supervisor.status())
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    for route, (name, media) in PAGES.items():
        app.add_api_route(route, _static_page(STATIC / name, media), methods=["GET"], include_in_schema=False)

    app.add_middleware(Guard, api_key=config.api_key, max_body_bytes=config.max_body_bytes)
    if config.cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins),
                           allow_methods=["GET", "POST", "DELETE"], allow_headers=["Authorization", "Content-Type"])
    return app


def _static_page(path: Path, media: str):
    async def page():
        return FileResponse(path, media_type=media, headers=PAGE_HEADERS)

    return page


def model_json(spec, config: ServeConfig, model_id: str) -> dict[str, Any]:
    """The served model: task, image mode, defaults, size rules and the request fields."""
    d = spec.defaults
    return {"id": model_id, "object": "model", "owned_by": "fastdit", "task": spec.task,
            "image": spec.image_mode, "two_experts": spec.two_experts,
            "defaults": {"size": f"{d.width}x{d.height}", "num_frames": d.num_frames, "steps": d.num_inference_steps,
                         "guidance_scale": d.guidance_scale, "guidance_scale_2": d.guidance_scale_2, "fps": d.fps},
            "size_multiple": spec.spatial_multiple, "frame_stride": spec.vae_stride_temporal,
            "fields": [f.describe() for f in FIELDS if not f.test_only],
            "limits": {"max_prompt_chars": config.max_prompt_chars, "max_image_bytes": config.max_image_bytes,
                       "max_queue": config.max_queue}}


async def _read_request(request: Request, config: ServeConfig) -> tuple[dict[str, Any], bytes | None]:
    """The typed fields of a JSON or multipart request, and the uploaded image's bytes."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "application/json":
        body = await request.body()
        try:
            raw = json.loads(body, parse_constant=_reject_nan) if body else None
        except ValueError as exc:
            raise RequestError(f"the body is not valid JSON: {str(exc)[:120]}", None, "invalid_json") from None
        except RecursionError:
            raise RequestError("the body is not valid JSON: nested too deeply", None, "invalid_json") from None
        if not isinstance(raw, dict):
            raise RequestError("the body must be a JSON object", None, "invalid_json")
        return parse_fields(raw, test_faults=config.test_faults), None
    if ctype == "multipart/form-data":
        form = await request.form(max_files=1, max_fields=len(FIELDS) + 4, max_part_size=256 * 1024)
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_callback(form.close)
            raw: dict[str, Any] = {}
            image: bytes | None = None
            for key in form.keys():
                items = form.getlist(key)
                if len(items) > 1:
                    raise RequestError(f"field {key[:40]!r} is given more than once", key[:40])
                item = items[0]
                if isinstance(item, str):
                    if key == "input_reference":
                        raise RequestError("input_reference must be a file upload", key, "invalid_type")
                    raw[key] = item
                elif key != "input_reference":
                    raise RequestError(f"only input_reference may be a file, not {key[:40]!r}", key[:40],
                                       "invalid_type")
                else:
                    image = await item.read(config.max_image_bytes + 1)
                    if len(image) > config.max_image_bytes:
                        raise RequestError(f"input_reference is larger than this server's limit of "
                                           f"{config.max_image_bytes} bytes", key, "image_too_large", 413)
            values = parse_fields(raw, from_form=True, test_faults=config.test_faults)
        return values, image
    raise RequestError("Content-Type must be application/json or multipart/form-data"
                       + (f", got {ctype[:60]!r}" if ctype else ""), None, "unsupported_media_type", 415)
