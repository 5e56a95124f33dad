"""Malformed requests: each is refused with a 4xx, an OpenAI-style error body with a clear
message, no traceback, and no job queued."""

from __future__ import annotations

import json
import re
import struct
import zlib

import pytest

from fastdit.serving.client import encode_multipart
from tests.serving.helpers import png_bytes, post_json, request

OK = {"prompt": "a cat", "size": "16x16", "num_frames": 1, "steps": 1}


def _bomb_png(width: int, height: int) -> bytes:
    """A PNG header that claims a huge image (no pixel data)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))


# (name, fields that replace OK's or None to drop, expected status, expected param, words in the message)
JSON_CASES = [
    ("no prompt", {"prompt": None}, 400, "prompt", "prompt is required"),
    ("prompt not a string", {"prompt": 5}, 400, "prompt", "must be a string"),
    ("prompt an object", {"prompt": {"text": "x"}}, 400, "prompt", "must be a string"),
    ("empty prompt", {"prompt": "   "}, 400, "prompt", "must not be empty"),
    ("huge prompt", {"prompt": "a" * 5000}, 400, "prompt", "at most 1000"),
    ("huge negative prompt", {"negative_prompt": "b" * 1001}, 400, "negative_prompt", "at most 1000"),
    ("size a number", {"size": 832}, 400, "size", "WIDTHxHEIGHT"),
    ("size words", {"size": "big"}, 400, "size", "WIDTHxHEIGHT"),
    ("size not a multiple", {"size": "17x16"}, 400, "size", "multiple of 16"),
    ("size zero", {"size": "0x16"}, 400, "size", "positive"),
    ("size huge", {"size": "8192x8192"}, 400, "size", "limit of 4096"),
    ("frames not 4k+1", {"num_frames": 6}, 400, "num_frames", "4k+1"),
    ("frames zero", {"num_frames": 0}, 400, "num_frames", "at least 1"),
    ("frames a string", {"num_frames": "5"}, 400, "num_frames", "must be an integer"),
    ("frames fractional", {"num_frames": 5.5}, 400, "num_frames", "must be an integer"),
    ("frames a boolean", {"num_frames": True}, 400, "num_frames", "must be an integer"),
    ("frames huge", {"num_frames": 100001}, 400, "num_frames", "limit of 1001"),
    ("negative steps", {"steps": -1}, 400, "steps", "at least 1"),
    ("zero steps", {"steps": 0}, 400, "steps", "at least 1"),
    ("too many steps", {"steps": 10**9}, 400, "steps", "limit of 1000"),
    ("guidance a word", {"guidance_scale": "high"}, 400, "guidance_scale", "must be a number"),
    ("negative guidance", {"guidance_scale": -1}, 400, "guidance_scale", "at least 0"),
    ("second guidance on one expert", {"guidance_scale_2": 3.0}, 400, "guidance_scale_2", "two-expert"),
    ("negative seed", {"seed": -5}, 400, "seed", "at least 0"),
    ("seed too big", {"seed": 2**64}, 400, "seed", "at most"),
    ("seed a word", {"seed": "abc"}, 400, "seed", "must be an integer"),
    ("seconds and frames", {"seconds": 2, "num_frames": 5}, 400, "seconds", "not both"),
    ("negative seconds", {"seconds": -1, "num_frames": None}, 400, "seconds", "more than 0"),
    ("zero fps", {"fps": 0}, 400, "fps", "at least 1"),
    ("unknown field", {"resolution": "4k"}, 400, "resolution", "unknown field"),
    ("path as a field", {"output": "/etc/passwd"}, 400, "output", "unknown field"),
    ("another model", {"model": "sora-2"}, 400, "model", "serves model"),
    ("image in JSON", {"input_reference": "/etc/passwd"}, 400, "input_reference", "multipart"),
    ("bad fault key", {"fault": {"rm": 1}}, 400, "fault", "unknown fault key"),
]


def _jobs_total(server) -> int:
    body = request(server.url, "GET", "/metrics").body.decode()
    return sum(int(n) for n in re.findall(r'^fastdit_jobs\{status="\w+"\} (\d+)$', body, re.M))


def _check_refusal(server, response, status, param=None, words=None, before=None):
    assert response.status == status, response
    body = response.json()
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"] and error["type"]
    if param is not None:
        assert error["param"] == param, error
    if words is not None:
        assert words in error["message"], error
    assert b"Traceback" not in response.body and b'File "' not in response.body
    if before is not None:
        assert _jobs_total(server) == before, "a refused request queued a job"


@pytest.mark.parametrize("name,change,status,param,words", JSON_CASES, ids=[c[0] for c in JSON_CASES])
def test_bad_json_request(server, name, change, status, param, words):
    payload = {k: v for k, v in {**OK, **change}.items() if v is not None}
    before = _jobs_total(server)
    _check_refusal(server, post_json(server.url, payload), status, param, words, before)


RAW_CASES = [
    ("not JSON", b'{"prompt": ', "application/json", 400, "not valid JSON"),
    ("JSON array", b'["a cat"]', "application/json", 400, "JSON object"),
    ("NaN", b'{"prompt": "x", "guidance_scale": NaN}', "application/json", 400, "not valid JSON"),
    ("not UTF-8", b'{"prompt": "\xff\xfe"}', "application/json", 400, "not valid JSON"),
    ("nested too deeply", b"[" * 200_000, "application/json", 400, "not valid JSON"),
    ("lone surrogate", b'{"prompt": "\\ud800 cat"}', "application/json", 400, "not valid Unicode"),
    ("NUL in prompt", b'{"prompt": "a\\u0000cat"}', "application/json", 400, "NUL"),
    ("multipart without boundary", b"prompt=a", "multipart/form-data", 400, "boundary"),
    ("multipart garbage", b"\x00\x01garbage--", "multipart/form-data; boundary=XyZ", 400, "multipart"),
    ("urlencoded form", b"prompt=a+cat", "application/x-www-form-urlencoded", 415, "Content-Type"),
    ("text/plain", b"a cat", "text/plain", 415, "Content-Type"),
    ("no content type", b"a cat", None, 415, "Content-Type"),
]


@pytest.mark.parametrize("name,body,ctype,status,words", RAW_CASES, ids=[c[0] for c in RAW_CASES])
def test_bad_body(server, name, body, ctype, status, words):
    before = _jobs_total(server)
    headers = {"Content-Type": ctype} if ctype else {}
    _check_refusal(server, request(server.url, "POST", "/v1/videos", body, headers), status, None, words, before)


def test_oversize_bodies(server):
    before = _jobs_total(server)
    big = json.dumps({**OK, "prompt": "x" * (3 * 2**20)}).encode()
    _check_refusal(server, post_json(server.url, big), 413, None, "at most", before)

    # the same without a Content-Length: chunked, refused once the bytes pass the limit
    import http.client
    import urllib.parse

    parts = urllib.parse.urlsplit(server.url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        chunks = (big[i:i + 65536] for i in range(0, len(big), 65536))
        conn.request("POST", "/v1/videos", body=chunks, headers={"Content-Type": "application/json"},
                     encode_chunked=True)
        response = conn.getresponse()
        status, data = response.status, response.read()
    except (BrokenPipeError, ConnectionResetError):
        status, data = 413, None  # the server may close the connection while we still send
    finally:
        conn.close()
    assert status == 413
    if data is not None:
        assert "larger than" in json.loads(data)["error"]["message"]
    assert _jobs_total(server) == before
    assert server.health()["status"] == "ok"


def _multipart(server, fields, files):
    body, ctype = encode_multipart(fields, files)
    return request(server.url, "POST", "/v1/videos", body, {"Content-Type": ctype})


MULTIPART_CASES = [
    ("non-image upload", {}, {"input_reference": ("cat.png", b"this is not an image")}, 400, "input_reference",
     "not an image"),
    ("empty upload", {}, {"input_reference": ("cat.png", b"")}, 400, "input_reference", "empty"),
    ("image bomb", {}, {"input_reference": ("bomb.png", _bomb_png(30000, 30000))}, 400, "input_reference",
     "pixels"),
    ("oversize image", {}, {"input_reference": ("big.png", b"\x89PNG" + b"0" * (2**20 + 10))}, 413,
     "input_reference", "limit"),
    ("image to a text-to-video model", {}, {"input_reference": ("cat.png", png_bytes())}, 400, "input_reference",
     "takes no image"),
    ("a file for a text field", {}, {"prompt": ("p.txt", b"a cat")}, 400, "prompt", "only input_reference"),
    ("steps a word", {"steps": "many"}, {}, 400, "steps", "must be an integer"),
    ("unknown form field", {"colour": "red"}, {}, 400, "colour", "unknown field"),
]


@pytest.mark.parametrize("name,fields,files,status,param,words", MULTIPART_CASES, ids=[c[0] for c in MULTIPART_CASES])
def test_bad_multipart(server, name, fields, files, status, param, words):
    before = _jobs_total(server)
    form = {k: str(v) for k, v in {**OK, **fields}.items()}
    if "prompt" in files:
        form.pop("prompt")
    _check_refusal(server, _multipart(server, form, files), status, param, words, before)


def test_duplicate_multipart_field(server):
    before = _jobs_total(server)
    dup = (b'--B\r\nContent-Disposition: form-data; name="prompt"\r\n\r\na\r\n'
           b'--B\r\nContent-Disposition: form-data; name="prompt"\r\n\r\nb\r\n--B--\r\n')
    response = request(server.url, "POST", "/v1/videos", dup, {"Content-Type": "multipart/form-data; boundary=B"})
    _check_refusal(server, response, 400, "prompt", "more than once", before)


PATHS = [
    ("GET", "/v1/videos/../../etc/passwd", 404),
    ("GET", "/v1/videos/..%2F..%2Fetc%2Fpasswd", 404),
    ("GET", "/v1/videos/%2e%2e%2f%2e%2e%2fetc%2fpasswd/content", 404),
    ("GET", "/v1/videos/video_..%2F..%2Fserver.lock/content", 404),
    ("DELETE", "/v1/videos/..%2Fjobs.sqlite", 404),
    ("GET", "/v1/videos/video_" + "0" * 32, 404),
    ("GET", "/v1/videos/video_" + "0" * 32 + "/content", 404),
    ("DELETE", "/v1/videos/video_" + "f" * 32, 404),
    ("GET", "/v1/videos/VIDEO_" + "A" * 32, 404),
    ("GET", "/static/../jobs.sqlite", 404),
    ("GET", "/static/%2e%2e/server.json", 404),
    ("GET", "/nonexistent", 404),
    ("PUT", "/v1/videos", 405),
    ("GET", "/v1/videos?limit=0", 400),
    ("GET", "/v1/videos?limit=abc", 400),
    ("GET", "/v1/videos?order=sideways", 400),
    ("GET", "/v1/videos?after=../../etc/passwd", 400),
    ("GET", "/v1/videos?after=video_" + "1" * 32, 404),
    ("GET", "/v1/videos?page=2", 400),
]


@pytest.mark.parametrize("method,path,status", PATHS, ids=[f"{m} {p}" for m, p, _ in PATHS])
def test_bad_paths_and_ids(server, method, path, status):
    before = _jobs_total(server)
    response = request(server.url, method, path)
    _check_refusal(server, response, status, before=before)
    assert b"root:" not in response.body and b"SQLite" not in response.body
