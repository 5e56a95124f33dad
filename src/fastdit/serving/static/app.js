// fastdit serve's web page: a form that posts to /v1/videos, and the job list, polled every second.
"use strict";

const $ = (selector) => document.querySelector(selector);
const ACTIVE = new Set(["queued", "in_progress"]);
const POLL_MS = 1000;
let model = null;

async function api(method, path, body) {
  const response = await fetch(path, { method, body, credentials: "same-origin" });
  let data = null;
  try { data = await response.json(); } catch (e) { data = null; }
  if (!response.ok) {
    const message = (data && data.error && data.error.message) || response.statusText;
    throw new Error(message);
  }
  return data;
}

function element(tag, props = {}, children = []) {
  const node = document.createElement(tag);
  Object.assign(node, props);
  for (const child of children) node.append(child);
  return node;
}

// ---- the form: one control per request field the server marks for the page -----------------
function buildOptions(info) {
  const box = $("#options");
  box.replaceChildren();
  const defaults = info.defaults;
  const placeholders = { size: defaults.size, num_frames: defaults.num_frames, steps: defaults.steps,
                         guidance_scale: defaults.guidance_scale, seed: "random" };
  for (const field of info.fields) {
    if (!field.ui || field.name === "prompt") continue;
    if (field.kind === "file" && info.image === "none") continue;
    const id = "field-" + field.name;
    const label = element("label", { htmlFor: id, textContent: field.name.replace(/_/g, " ") + " " });
    label.append(element("span", { className: "help", textContent: field.help }));
    let input;
    if (field.kind === "file") {
      input = element("input", { type: "file", accept: "image/*", id, name: field.name,
                                 required: info.image === "required" });
    } else {
      input = element("input", { type: "text", id, name: field.name,
                                 placeholder: String(placeholders[field.name] ?? "") });
      if (field.kind === "int" || field.kind === "float") input.inputMode = "decimal";
    }
    box.append(element("div", {}, [label, input]));
  }
}

async function submit(event) {
  event.preventDefault();
  const message = $("#message");
  const form = new FormData();
  for (const input of $("#create").querySelectorAll("textarea, input")) {
    if (input.type === "file") {
      if (input.files.length) form.append(input.name, input.files[0]);
    } else if (input.value.trim() !== "") {
      form.append(input.name, input.value.trim());
    }
  }
  $("#submit").disabled = true;
  try {
    const job = await api("POST", "/v1/videos", form);
    message.className = "";
    message.textContent = "queued " + job.id;
    await refresh();
  } catch (error) {
    message.className = "error";
    message.textContent = error.message;
  } finally {
    $("#submit").disabled = false;
  }
}

// ---- the job list: rows are kept and updated in place (a playing video keeps playing) ---------
const rows = new Map();

function row(job) {
  let entry = rows.get(job.id);
  if (entry) return entry;
  const status = element("span", { className: "status" });
  const progress = element("progress", { max: 100, value: 0 });
  const text = element("span", { className: "prompt", textContent: job.prompt });
  const meta = element("span", { className: "id", textContent: `${job.id} · ${job.size} · ${job.num_frames} frame${job.num_frames === 1 ? "" : "s"} · seed ${job.seed}` });
  const cancel = element("button", { type: "button", className: "cancel", textContent: "Cancel" });
  const remove = element("button", { type: "button", className: "delete", textContent: "Delete" });
  const error = element("div", { className: "error" });
  const media = element("div", { className: "media" });
  cancel.addEventListener("click", () => act(job.id));
  remove.addEventListener("click", () => act(job.id));
  const node = element("li", { className: "job" }, [
    element("div", { className: "line" }, [status, progress, text, cancel, remove]), meta, error, media]);
  node.dataset.id = job.id;
  entry = { node, status, progress, cancel, remove, error, media, shown: false };
  rows.set(job.id, entry);
  return entry;
}

async function act(id) {
  try { await api("DELETE", `/v1/videos/${encodeURIComponent(id)}`); } catch (error) { $("#message").textContent = error.message; }
  await refresh();
}

function update(entry, job) {
  entry.node.dataset.status = job.status;
  entry.status.textContent = job.status.replace("_", " ") + (job.status === "in_progress" ? ` ${job.steps_done}/${job.steps_total}` : "");
  entry.status.className = "status " + job.status;
  entry.progress.value = job.progress;
  entry.progress.hidden = !ACTIVE.has(job.status);
  entry.cancel.hidden = !ACTIVE.has(job.status);
  entry.remove.hidden = ACTIVE.has(job.status);
  entry.error.textContent = job.error ? job.error.message : "";
  if (job.status === "completed" && !entry.shown) {
    const url = `/v1/videos/${encodeURIComponent(job.id)}/content`;
    const video = element("video", { src: url, controls: true, loop: true, muted: true, autoplay: true, playsInline: true });
    const link = element("a", { href: url, textContent: "Download", download: `${job.id}.mp4`, className: "download" });
    entry.media.replaceChildren(video, link);
    entry.shown = true;
  }
}

async function refresh() {
  let list;
  try { list = await api("GET", "/v1/videos?limit=50"); } catch (error) { $("#health").textContent = "server unreachable: " + error.message; return; }
  const seen = new Set();
  const box = $("#jobs");
  list.data.forEach((job, index) => {
    const entry = row(job);
    update(entry, job);
    seen.add(job.id);
    if (box.children[index] !== entry.node) box.insertBefore(entry.node, box.children[index] || null);
  });
  for (const [id, entry] of rows) {
    if (!seen.has(id)) { entry.node.remove(); rows.delete(id); }
  }
  $("#empty").hidden = list.data.length > 0;
}

async function start() {
  $("#create").addEventListener("submit", submit);
  try {
    const models = await api("GET", "/v1/models");
    model = models.data[0];
    $("#model").textContent = `${model.id} (${model.task})`;
    buildOptions(model);
  } catch (error) {
    $("#model").textContent = "cannot reach the server: " + error.message;
  }
  await refresh();
  setInterval(refresh, POLL_MS);
}

start();
