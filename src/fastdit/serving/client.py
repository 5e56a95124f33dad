"""A small Python client for ``fastdit serve`` (standard library only).

    from fastdit.serving import Client
    client = Client("http://127.0.0.1:8000", api_key=None)
    job = client.create("a cat surfing", size="832x480", num_frames=81, seed=1)
    job = client.wait(job["id"], timeout=600)          # completed (raises APIError if it failed)
    client.download(job["id"], "cat.mp4")
    client.cancel(other["id"])                          # stops a queued or running job

Every method returns the server's JSON (a dict); an error answer raises :class:`APIError`.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from fastdit.errors import FastditError

FINISHED = ("completed", "failed", "cancelled")


class APIError(FastditError):
    """An error answer from the server: ``status`` (HTTP), ``type``, ``code``, ``param``, ``message``;
    also raised by :meth:`Client.wait` for a job that failed or was cancelled."""

    def __init__(self, status: int, message: str, type: str | None = None, code: str | None = None,
                 param: str | None = None, job: dict | None = None):
        super().__init__(f"{status}: {message}" if status else message)
        self.status, self.message, self.type, self.code, self.param, self.job = status, message, type, code, param, job


class Client:
    """``fastdit serve``'s API: create, get, list, wait, download, cancel."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 60.0):
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout

    # ---- the calls -----------------------------------------------------------------------
    def create(self, prompt: str, *, image: str | os.PathLike | bytes | None = None, **fields: Any) -> dict:
        """Queue a video: ``fields`` are the API's (size, seconds, num_frames, seed, steps,
        guidance_scale, negative_prompt, ...). ``image``: a path or the bytes of a first frame
        (sent as multipart ``input_reference``)."""
        fields = {"prompt": prompt, **{k: v for k, v in fields.items() if v is not None}}
        if image is None:
            return self._json("POST", "/v1/videos", body=json.dumps(fields).encode(),
                              content_type="application/json")
        data = image if isinstance(image, bytes) else Path(image).read_bytes()
        name = "image.png" if isinstance(image, bytes) else Path(image).name
        body, content_type = encode_multipart(fields, {"input_reference": (name, data)})
        return self._json("POST", "/v1/videos", body=body, content_type=content_type)

    def get(self, video_id: str) -> dict:
        return self._json("GET", f"/v1/videos/{urllib.parse.quote(video_id, safe='')}")

    def list(self, limit: int = 20, after: str | None = None, order: str = "desc") -> dict:
        query = {"limit": limit, "order": order} | ({"after": after} if after else {})
        return self._json("GET", "/v1/videos?" + urllib.parse.urlencode(query))

    def cancel(self, video_id: str) -> dict:
        """Cancel a queued or running job (or delete a finished one)."""
        return self._json("DELETE", f"/v1/videos/{urllib.parse.quote(video_id, safe='')}")

    delete = cancel

    def wait(self, video_id: str, timeout: float = 3600.0, poll: float = 0.5, raise_on_failure: bool = True) -> dict:
        """Poll until the job is completed, failed or cancelled; returns it (or raises APIError
        for a failed / cancelled job unless ``raise_on_failure=False``; TimeoutError when
        ``timeout`` seconds pass first)."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.get(video_id)
            if job["status"] in FINISHED:
                if job["status"] != "completed" and raise_on_failure:
                    error = job.get("error") or {}
                    raise APIError(0, f"video {video_id} {job['status']}: {error.get('message', '')}".rstrip(": "),
                                   code=error.get("code") or job["status"], job=job)
                return job
            if time.monotonic() >= deadline:
                raise TimeoutError(f"video {video_id} is still {job['status']} after {timeout:g} s")
            time.sleep(min(poll, max(0.0, deadline - time.monotonic())))

    def download(self, video_id: str, path: str | os.PathLike) -> Path:
        """Write the finished video to ``path`` (a temporary name first, renamed at the end)."""
        path = Path(path)
        with self._open("GET", f"/v1/videos/{urllib.parse.quote(video_id, safe='')}/content") as response:
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent or ".")
            try:
                with os.fdopen(fd, "wb") as f:
                    while chunk := response.read(1 << 20):
                        f.write(chunk)
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        return path

    def content(self, video_id: str, byte_range: tuple[int, int] | None = None) -> bytes:
        """The video's bytes (``byte_range=(first, last)``: an HTTP range, both inclusive)."""
        headers = {"Range": f"bytes={byte_range[0]}-{byte_range[1]}"} if byte_range else {}
        with self._open("GET", f"/v1/videos/{urllib.parse.quote(video_id, safe='')}/content",
                        headers=headers) as response:
            return response.read()

    def health(self) -> dict:
        return self._json("GET", "/health")

    # ---- HTTP ----------------------------------------------------------------------------------
    def _open(self, method: str, route: str, body: bytes | None = None, content_type: str | None = None,
              headers: dict[str, str] | None = None):
        request = urllib.request.Request(self.base_url + route, data=body, method=method)
        if content_type:
            request.add_header("Content-Type", content_type)
        if self.api_key:
            request.add_header("Authorization", f"Bearer {self.api_key}")
        for key, value in (headers or {}).items():
            request.add_header(key, value)
        try:
            return urllib.request.urlopen(request, timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            raise _api_error(exc) from None

    def _json(self, method: str, route: str, **kwargs) -> dict:
        with self._open(method, route, **kwargs) as response:
            return json.loads(response.read())


def _api_error(exc: urllib.error.HTTPError) -> APIError:
    try:
        error = json.loads(exc.read()).get("error") or {}
    except (ValueError, AttributeError):
        error = {}
    return APIError(exc.code, error.get("message") or exc.reason, error.get("type"), error.get("code"),
                    error.get("param"))


def encode_multipart(fields: dict[str, Any], files: dict[str, tuple[str, bytes]]) -> tuple[bytes, str]:
    """A multipart/form-data body: text ``fields`` (JSON-encoded when not strings) and ``files``."""
    boundary = "fastdit-" + secrets.token_hex(12)
    out = io.BytesIO()
    for name, value in fields.items():
        text = value if isinstance(value, str) else json.dumps(value)
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode())
        out.write(text.encode("utf-8") + b"\r\n")
    for name, (filename, data) in files.items():
        safe = filename.replace('"', "").replace("\r", "").replace("\n", "")
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{safe}"\r\n'
                  "Content-Type: application/octet-stream\r\n\r\n".encode())
        out.write(data + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"
