"""A real ``fastdit serve`` process on 127.0.0.1 for the serving tests, and small HTTP helpers.

Every wait here is bounded in time; servers bind only 127.0.0.1.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 120.0


class ServerProcess:
    """``python -m fastdit.serving`` in a subprocess; its log goes to ``state_dir/../<name>.log``."""

    def __init__(self, model: Path, state_dir: Path, *args: str, api_key: str | None = None, name: str = "server"):
        self.model, self.state_dir, self.args, self.api_key = Path(model), Path(state_dir), list(args), api_key
        self.log_path = self.state_dir.parent / f"{name}.log"
        self.process: subprocess.Popen | None = None
        self.url = ""

    def start(self, wait_ready: bool = True) -> "ServerProcess":
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        env.pop("FASTDIT_API_KEY", None)
        command = [sys.executable, "-m", "fastdit.serving", "--model", str(self.model), "--state-dir",
                   str(self.state_dir), "--host", "127.0.0.1", "--port", "0", *self.args]
        if self.api_key:
            command += ["--api-key", self.api_key]
        (self.state_dir / "server.json").unlink(missing_ok=True)
        self.log = open(self.log_path, "ab")
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, env=env,
                                        start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        info = self.state_dir / "server.json"
        while not info.is_file():
            self._check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"server did not start; log:\n{self.log_text()}")
            time.sleep(0.1)
        self.url = json.loads(info.read_text())["url"]
        if wait_ready:
            self.wait_workers(deadline)
        return self

    def _check_alive(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(f"server exited with {self.process.returncode}; log:\n{self.log_text()}")

    def wait_workers(self, deadline: float | None = None, count: int | None = None) -> list[dict]:
        """Until every worker (or ``count`` of them) is ready or busy."""
        deadline = deadline or time.monotonic() + START_TIMEOUT_S
        while True:
            self._check_alive()
            workers = self.health()["workers"]
            ready = [w for w in workers if w["state"] in ("ready", "busy")]
            if len(ready) >= (count or len(workers)):
                return workers
            if time.monotonic() > deadline:
                raise TimeoutError(f"workers not ready: {workers}; log:\n{self.log_text()[-4000:]}")
            time.sleep(0.2)

    def health(self) -> dict:
        return request(self.url, "GET", "/health").json()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 30.0) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(10)
        finally:
            self.log.close()

    def kill(self) -> None:
        """SIGKILL the front end alone (its workers must notice and exit by themselves)."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)
        self.log.close()

    def client(self):
        from fastdit.serving import Client

        return Client(self.url, api_key=self.api_key, timeout=30)


class Response:
    def __init__(self, status: int, headers: dict[str, str], body: bytes):
        self.status, self.headers, self.body = status, headers, body

    def json(self):
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<{self.status} {self.body[:300]!r}>"


def request(base_url: str, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
            timeout: float = 30.0) -> Response:
    """One raw HTTP request (http.client: any path, any header, any body)."""
    parts = urllib.parse.urlsplit(base_url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        headers = dict(headers or {})
        if body is not None and "Content-Length" not in headers:
            headers["Content-Length"] = str(len(body))
        for key, value in headers.items():
            conn.putheader(key, value)
        conn.endheaders()
        if body is not None:
            conn.send(body)
        response = conn.getresponse()
        return Response(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        conn.close()


def post_json(base_url: str, payload, headers: dict | None = None) -> Response:
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return request(base_url, "POST", "/v1/videos", data, {"Content-Type": "application/json", **(headers or {})})


def read_mp4(path: Path) -> np.ndarray:
    """Decode a video: ``[F, H, W, 3]`` uint8."""
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    width, height = meta["size"]
    frames = [np.frombuffer(f, dtype=np.uint8).reshape(height, width, 3) for f in reader]
    return np.stack(frames)


def wait_for(predicate, timeout: float, interval: float = 0.05, what: str = "condition"):
    """Poll ``predicate()`` until it returns something truthy (bounded by ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def png_bytes(width: int = 24, height: int = 20, seed: int = 0) -> bytes:
    import io

    from PIL import Image

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray((rng.random((height, width, 3)) * 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()
