"""An image-to-video server with an API key: authentication on every route, the I2V happy path
(multipart upload), and the web page in a real headless browser (Debian's chromium through
Playwright). The browser test fails, never skips, when chromium or Playwright is missing."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pytest

from fastdit.serving import APIError, Client
from tests.serving.helpers import ServerProcess, png_bytes, read_mp4, request, wait_for

pytestmark = pytest.mark.timeout(300)
KEY = "test-key-" + "9" * 24
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def i2v_server(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-i2v")
    proc = ServerProcess(tiny_model("i2v"), root / "state", "--devices", "cpu", "--test-faults", api_key=KEY,
                         name="i2v").start()
    yield proc
    proc.stop()


def _auth(key=KEY):
    return {"Authorization": f"Bearer {key}"}


def test_every_route_but_health_needs_the_key(i2v_server):
    client = i2v_server.client()
    job = client.wait(client.create("a cat", image=png_bytes(), size="16x16", num_frames=1, steps=1)["id"], timeout=60)
    vid = job["id"]
    routes = [("GET", "/"), ("GET", "/static/app.js"), ("GET", "/static/style.css"), ("GET", "/metrics"),
              ("GET", "/v1/models"), ("GET", "/v1/videos"), ("POST", "/v1/videos"), ("GET", f"/v1/videos/{vid}"),
              ("GET", f"/v1/videos/{vid}/content"), ("DELETE", f"/v1/videos/{vid}"), ("GET", "/nonexistent"),
              ("GET", "/v1/videos/../../etc/passwd")]
    wrong = [{}, _auth("wrong"), _auth(KEY + "x"), _auth(KEY[:-1]), {"Authorization": KEY},
             {"Authorization": "Basic " + base64.b64encode(b"user:nope").decode()}, {"X-Api-Key": KEY}]
    for method, path in routes:
        for headers in wrong:
            body = b"{}" if method == "POST" else None
            response = request(i2v_server.url, method, path, body, {"Content-Type": "application/json", **headers})
            assert response.status == 401, (method, path, headers, response)
            assert response.json()["error"]["code"] == "invalid_api_key"
            assert "www-authenticate" in response.headers
    assert request(i2v_server.url, "GET", "/health").status == 200
    # the right key, as a bearer token or as HTTP Basic's password (for browsers)
    assert request(i2v_server.url, "GET", f"/v1/videos/{vid}", headers=_auth()).status == 200
    basic = {"Authorization": "Basic " + base64.b64encode(f"any:{KEY}".encode()).decode()}
    assert request(i2v_server.url, "GET", f"/v1/videos/{vid}/content", headers=basic).status == 200
    assert request(i2v_server.url, "GET", "/", headers=basic).status == 200
    with pytest.raises(APIError) as err:
        Client(i2v_server.url).get(vid)
    assert err.value.status == 401


def test_i2v_multipart_happy_path(i2v_server, tmp_path):
    client = i2v_server.client()
    image = png_bytes(40, 56, seed=3)
    (tmp_path / "first.png").write_bytes(image)
    job = client.create("a cat walks", image=tmp_path / "first.png", size="32x16", num_frames=5, steps=2, seed=11)
    done = client.wait(job["id"], timeout=60)
    assert done["status"] == "completed" and done["size"] == "32x16"
    assert read_mp4(client.download(job["id"], tmp_path / "i2v.mp4")).shape == (5, 16, 32, 3)
    stored = i2v_server.state_dir / "inputs" / f"{job['id']}.png"
    assert stored.is_file()  # kept for a re-run; server-made name
    # the image is required for this model
    with pytest.raises(APIError) as err:
        client.create("no image", size="16x16", num_frames=1, steps=1)
    assert err.value.status == 400 and err.value.param == "input_reference"
    # and the same seed and image give the same video
    again = client.wait(client.create("a cat walks", image=image, size="32x16", num_frames=5, steps=2, seed=11)["id"],
                        timeout=60)
    np.testing.assert_array_equal(read_mp4(client.download(again["id"], tmp_path / "again.mp4")),
                                  read_mp4(tmp_path / "i2v.mp4"))
    assert client.cancel(job["id"])["deleted"] and not stored.exists()


def _browser(playwright, profile: Path):
    assert Path(CHROMIUM).is_file(), f"{CHROMIUM} is missing: scripts/install.sh test installs Debian's chromium"
    return playwright.chromium.launch_persistent_context(
        str(profile), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
        http_credentials={"username": "fastdit", "password": KEY}, viewport={"width": 1100, "height": 900})


def test_web_page_in_a_headless_browser(i2v_server, tmp_path):
    from playwright.sync_api import expect, sync_playwright  # a missing Playwright fails the test

    image = tmp_path / "first.png"
    image.write_bytes(png_bytes(48, 32, seed=5))
    client = i2v_server.client()
    with sync_playwright() as p:
        context = _browser(p, tmp_path / "profile")
        try:
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(i2v_server.url + "/")
            expect(page.locator("#model")).to_contain_text("i2v", timeout=20_000)
            expect(page.locator("#field-input_reference")).to_have_attribute("required", "")

            def submit(prompt: str, steps: int, sleep: float) -> str:
                page.fill("#prompt", prompt)
                page.set_input_files("#field-input_reference", str(image))
                page.fill("#field-size", "16x16")
                page.fill("#field-num_frames", "5")
                page.fill("#field-steps", str(steps))
                # a slow step, as on a GPU (a test-only field this server accepts)
                page.evaluate("""(sleep) => { const f = document.querySelector('#create');
                    let i = f.querySelector('input[name=fault]');
                    if (!i) { i = document.createElement('input'); i.type = 'hidden'; i.name = 'fault'; f.append(i); }
                    i.value = JSON.stringify({sleep_per_step: sleep}); }""", sleep)
                # the message of an earlier submit must not be read as this one's
                page.evaluate("() => { document.querySelector('#message').textContent = ''; }")
                page.click("#submit")
                expect(page.locator("#message")).to_contain_text("queued video_", timeout=20_000)
                return page.locator("#message").inner_text().split()[-1]

            # 1. submit, watch the progress change, play the finished video
            job_id = submit("a fox in the snow", 6, 0.4)
            row = page.locator(f'.job[data-id="{job_id}"]')
            expect(row).to_have_attribute("data-status", "in_progress", timeout=30_000)
            bar = row.locator("progress")
            seen = {int(bar.get_attribute("value") or 0)}
            wait_for(lambda: (seen.add(int(bar.get_attribute("value") or 0)) or len(seen) >= 3)
                     or row.get_attribute("data-status") == "completed", 30, what="progress changes")
            assert len(seen) >= 3, seen
            expect(row).to_have_attribute("data-status", "completed", timeout=60_000)
            video = row.locator("video")
            expect(video).to_have_count(1)
            state = video.evaluate("""async (v) => {
                if (v.readyState < 2) await new Promise((ok, bad) => {
                    v.addEventListener('loadeddata', ok, {once: true}); v.addEventListener('error', bad, {once: true});
                    setTimeout(() => bad(new Error('no data in 20 s')), 20000); });
                await v.play();
                const t0 = v.currentTime;
                await new Promise((ok) => setTimeout(ok, 400));
                return {w: v.videoWidth, h: v.videoHeight, duration: v.duration, error: v.error && v.error.code,
                        paused: v.paused, advanced: v.currentTime !== t0 || v.loop};
            }""")
            assert state["w"] == 16 and state["h"] == 16 and state["error"] is None, state
            assert not state["paused"] and state["advanced"] and state["duration"] > 0, state
            href = row.locator("a.download").get_attribute("href")
            assert href == f"/v1/videos/{job_id}/content"

            # 2. cancel a running job from the page
            slow_id = submit("a slow one", 40, 0.5)
            slow = page.locator(f'.job[data-id="{slow_id}"]')
            expect(slow).to_have_attribute("data-status", "in_progress", timeout=30_000)
            slow.locator("button.cancel").click()
            expect(slow).to_have_attribute("data-status", "cancelled", timeout=20_000)
            stopped = wait_for(lambda: [e for e in client.get(slow_id)["history"] if e["event"] == "stopped"], 10,
                               what="the worker to stop")[0]
            assert client.get(slow_id)["status"] == "cancelled" and stopped["after_step"] < 40
            assert not list((i2v_server.state_dir / "outputs").glob(f"*{slow_id}*"))
            assert errors == [], errors
        finally:
            context.close()
