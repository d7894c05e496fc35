// The Vigil viewer: the latest frames of a source with their boxes, a live list of
// detections and per-stage latency, all from the API of the server that serves this page.
// Plain browser JavaScript, no build step. Every request carries the bearer token when
// one is known (from `#token=...` in the address, or typed in when the API answers 401),
// so the stream is read with fetch rather than EventSource, which cannot send headers.
"use strict";

const MAX_FRAMES = 8;
const MAX_LIVE = 50;
const STATS_OF = 100;
const RATE_WINDOW_MS = 10_000;
const SVG = "http://www.w3.org/2000/svg";

const el = (id) => document.getElementById(id);
const state = {
  token: sessionStorage.getItem("vigil-token") || "",
  source: new URLSearchParams(location.search).get("source") || "",
  stream: null, // AbortController of the open stream
  recent: [], // the last STATS_OF results, newest last
};

// A token in the fragment (never sent to the server) is kept for this tab and removed
// from the address bar.
const fragment = new URLSearchParams(location.hash.slice(1));
if (fragment.get("token")) {
  state.token = fragment.get("token");
  sessionStorage.setItem("vigil-token", state.token);
  history.replaceState(null, "", location.pathname + location.search);
}

function setStatus(text, kind) {
  const s = el("status");
  s.textContent = text;
  s.dataset.state = kind;
  document.body.dataset.stream = kind;
}

async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  if (state.token) headers.set("Authorization", "Bearer " + state.token);
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401) {
    el("auth").hidden = false;
    setStatus("the API needs a token", "error");
  }
  return response;
}

async function errorText(response) {
  try {
    const body = await response.json();
    return body.error ? body.error.message : response.statusText;
  } catch {
    return response.statusText;
  }
}

// --- sources -------------------------------------------------------------------------
function addSourceOption(source) {
  const select = el("source");
  if ([...select.options].some((o) => o.value === source)) return;
  const option = new Option(source, source);
  const after = [...select.options].slice(1).find((o) => o.value > source);
  select.add(option, after || null);
}

async function loadSources() {
  const response = await api("/v1/sources");
  if (!response.ok) return;
  const body = await response.json();
  for (const s of body.sources) addSourceOption(s.source);
  el("source").value = state.source;
}

// --- frames --------------------------------------------------------------------------
function drawBoxes(svg, frame) {
  svg.setAttribute("viewBox", `0 0 ${frame.width} ${frame.height}`);
  svg.setAttribute("preserveAspectRatio", "none");
  // Labels about 14 px high on a card some 300 px wide, whatever the image size.
  const fontScale = Math.max(frame.width, frame.height) / 300;
  for (const d of frame.detections) {
    const [x0, y0, x1, y1] = d.box;
    const g = document.createElementNS(SVG, "g");
    g.setAttribute("class", "box");
    g.dataset.label = d.label;
    g.dataset.score = d.score.toFixed(3);
    const rect = document.createElementNS(SVG, "rect");
    rect.setAttribute("x", x0);
    rect.setAttribute("y", y0);
    rect.setAttribute("width", Math.max(0, x1 - x0));
    rect.setAttribute("height", Math.max(0, y1 - y0));
    const caption = `${d.label} ${(d.score * 100).toFixed(0)}%`;
    const tag = document.createElementNS(SVG, "rect");
    tag.setAttribute("class", "tag");
    tag.setAttribute("x", x0);
    tag.setAttribute("y", Math.max(0, y0 - 18 * fontScale));
    tag.setAttribute("width", (caption.length * 9.5 + 8) * fontScale);
    tag.setAttribute("height", 18 * fontScale);
    const text = document.createElementNS(SVG, "text");
    text.setAttribute("x", x0 + 3 * fontScale);
    text.setAttribute("y", Math.max(0, y0 - 18 * fontScale) + 14 * fontScale);
    text.setAttribute("font-size", 14 * fontScale);
    text.textContent = caption;
    g.append(rect, tag, text);
    svg.append(g);
  }
}

// Images are fetched at most IMAGES_PER_S, newest card first, and only for cards still
// on the page: a busy stream replaces cards faster than their images are worth fetching,
// and the API's rate limit counts every request.
const IMAGES_PER_S = 4;
const imageQueue = [];

async function loadImage(img, frameId) {
  const response = await api(`/v1/frames/${encodeURIComponent(frameId)}/image`);
  if (!response.ok) {
    img.alt = await errorText(response);
    return;
  }
  img.src = URL.createObjectURL(await response.blob());
}

function nextImage() {
  const onPage = imageQueue.filter((job) => job.img.isConnected);
  imageQueue.splice(0, imageQueue.length, ...onPage);
  const job = imageQueue.pop();
  if (job) loadImage(job.img, job.frameId).catch((e) => (job.img.alt = e.message));
}

function frameCard(frame) {
  const figure = document.createElement("figure");
  figure.className = "frame";
  figure.dataset.frameId = frame.frame_id;
  figure.dataset.source = frame.source;
  const canvas = document.createElement("div");
  canvas.className = "canvas";
  canvas.style.aspectRatio = `${frame.width} / ${frame.height}`;
  const img = document.createElement("img");
  img.alt = `frame ${frame.seq} of ${frame.source}`;
  const svg = document.createElementNS(SVG, "svg");
  drawBoxes(svg, frame);
  canvas.append(img, svg);
  const caption = document.createElement("figcaption");
  const labels = frame.detections.map((d) => d.label);
  const name = document.createElement("b");
  name.textContent = `${frame.source} #${frame.seq}`;
  caption.append(name, ` · ${new Date(frame.captured_at).toLocaleTimeString()} · ${labels.length ? labels.join(", ") : "nothing detected"}`);
  figure.append(canvas, caption);
  imageQueue.push({ img, frameId: frame.frame_id });
  return figure;
}

function showFrame(frame, newest) {
  const frames = el("frames");
  if (frames.querySelector(`[data-frame-id="${CSS.escape(frame.frame_id)}"]`)) return;
  const card = frameCard(frame);
  if (newest) frames.prepend(card);
  else frames.append(card);
  while (frames.children.length > MAX_FRAMES) {
    const old = frames.lastElementChild;
    const img = old.querySelector("img");
    if (img && img.src.startsWith("blob:")) URL.revokeObjectURL(img.src);
    old.remove();
  }
}

async function loadLatest() {
  el("frames").replaceChildren();
  if (!state.source) return; // all sources: the stream fills the grid
  const path = `/v1/sources/${encodeURIComponent(state.source)}/detections?limit=${MAX_FRAMES}`;
  const response = await api(path);
  if (!response.ok) return;
  const body = await response.json();
  for (const frame of body.frames) showFrame(frame, false);
}

// --- live list and stage latencies ----------------------------------------------------
function listDetection(frame) {
  const li = document.createElement("li");
  li.dataset.frameId = frame.frame_id;
  const time = document.createElement("time");
  time.dateTime = frame.stored_at;
  time.textContent = new Date(frame.stored_at).toLocaleTimeString();
  const found = frame.detections.map((d) => `${d.label} ${(d.score * 100).toFixed(0)}%`).join(", ");
  li.append(time, `${frame.source} #${frame.seq}: ${found || "nothing"}`);
  const live = el("live");
  live.prepend(li);
  while (live.children.length > MAX_LIVE) live.lastElementChild.remove();
}

function median(values) {
  if (!values.length) return null;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

function ms(value) {
  if (value === null) return "–";
  return value >= 1000 ? `${(value / 1000).toFixed(2)} s` : `${value.toFixed(0)} ms`;
}

function updateStats() {
  const r = state.recent;
  const t = (frame, key) => Date.parse(frame[key]);
  el("stat-detect").textContent = ms(median(r.map((f) => t(f, "processed_at") - t(f, "captured_at"))));
  el("stat-model").textContent = ms(median(r.map((f) => f.inference_ms)));
  el("stat-store").textContent = ms(median(r.map((f) => t(f, "stored_at") - t(f, "processed_at"))));
  el("stat-e2e").textContent = ms(median(r.map((f) => t(f, "stored_at") - t(f, "captured_at"))));
  const since = Date.now() - RATE_WINDOW_MS;
  const inWindow = r.filter((f) => f.receivedAt >= since).length;
  el("stat-rate").textContent = `${(inWindow / (RATE_WINDOW_MS / 1000)).toFixed(1)} frames/s`;
}

function onDetection(frame) {
  state.recent.push({ ...frame, receivedAt: Date.now() });
  if (state.recent.length > STATS_OF) state.recent.shift();
  addSourceOption(frame.source);
  listDetection(frame);
  if (!state.source || frame.source === state.source) showFrame(frame, true);
  updateStats();
}

// --- the stream (Server-Sent Events over fetch) ----------------------------------------
async function readStream(controller) {
  const query = state.source ? `?source=${encodeURIComponent(state.source)}` : "";
  const response = await api(`/v1/stream${query}`, { signal: controller.signal, headers: { Accept: "text/event-stream" } });
  if (!response.ok) {
    if (response.status !== 401) setStatus(`stream refused: ${await errorText(response)}`, "error");
    return response.status !== 401;
  }
  setStatus("live", "open");
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return true;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (event === "detection" && data.length) onDetection(JSON.parse(data.join("\n")));
      else if (event === "lagged") setStatus(`live (missed ${data.join("")} results: too slow)`, "open");
    }
  }
}

// Keeps one stream open for the chosen source, reconnecting with a growing pause.
async function follow() {
  if (state.stream) state.stream.abort();
  const controller = new AbortController();
  state.stream = controller;
  let pause = 1000;
  while (!controller.signal.aborted) {
    let retry = true;
    try {
      retry = await readStream(controller);
      pause = 1000;
    } catch (e) {
      if (controller.signal.aborted) return;
      setStatus(`stream lost (${e.message}); reconnecting`, "error");
    }
    if (!retry) return; // needs a token first
    if (!controller.signal.aborted) setStatus("reconnecting…", "connecting");
    await new Promise((resolve) => setTimeout(resolve, pause));
    pause = Math.min(pause * 2, 15_000);
  }
}

async function start() {
  await loadSources();
  await loadLatest();
  follow();
}

el("source").addEventListener("change", (e) => {
  state.source = e.target.value;
  const url = new URL(location.href);
  if (state.source) url.searchParams.set("source", state.source);
  else url.searchParams.delete("source");
  history.replaceState(null, "", url);
  loadLatest().then(follow);
});

el("auth").addEventListener("submit", (e) => {
  e.preventDefault();
  state.token = el("token").value.trim();
  sessionStorage.setItem("vigil-token", state.token);
  el("auth").hidden = true;
  start();
});

setInterval(updateStats, 1000);
setInterval(nextImage, 1000 / IMAGES_PER_S);
start();
