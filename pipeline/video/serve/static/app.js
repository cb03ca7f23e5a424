// The search page: plain browser JavaScript, no build step, nothing loaded from elsewhere.
"use strict";

const $ = (id) => document.getElementById(id);
const FILTERS = ["path_prefix", "path_glob", "duration_min", "duration_max", "time_min", "time_max"];
const state = { q: "", like: null, likeLabel: "", upload: null, page: 0, k: 24, filters: {}, busy: false };
let stats = null;
let scenesEnabled = false; // the server serves reconstructions (/api/scenes): Scenes tab and "3D" buttons
let clipEnd = null; // the player stops here (segments)
let playing = null; // the hit in the player

// ------------------------------------------------------------------ requests

async function api(path, options = {}) {
  const response = await fetch(path, { credentials: "same-origin", ...options });
  if (response.status === 401) {
    await askToken();
    return api(path, options);
  }
  let body = null;
  try { body = await response.json(); } catch (_) { /* not JSON */ }
  if (!response.ok) throw new Error((body && body.error) || `${response.status} ${response.statusText}`);
  return body;
}

function askToken() {
  return new Promise((resolve) => {
    const dialog = $("token-dialog");
    const form = $("token-form");
    $("token-error").hidden = true;
    form.onsubmit = async (event) => {
      event.preventDefault();
      const token = $("token").value.trim();
      const r = await fetch("/api/login", { method: "POST", credentials: "same-origin",
                                            headers: { Authorization: `Bearer ${token}` } });
      if (r.ok) { dialog.close(); resolve(); return; }
      $("token-error").textContent = "That token was not accepted.";
      $("token-error").hidden = false;
    };
    if (!dialog.open) dialog.showModal();
  });
}

// ------------------------------------------------------------------ formatting

function clock(s) {
  if (s === null || s === undefined || !isFinite(s)) return "?";
  const m = Math.floor(s / 60), sec = s - 60 * m;
  return `${m}:${sec < 10 ? "0" : ""}${sec.toFixed(1)}`;
}

function isSegment(hit) {
  return hit.duration_s !== null && hit.end_s !== null &&
         (hit.start_s > 0.05 || hit.end_s < hit.duration_s - 0.05);
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v; else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

// ------------------------------------------------------------------ page state <-> URL

function readUrl() {
  const p = new URLSearchParams(location.search);
  state.q = p.get("q") || "";
  state.like = p.get("like");
  state.likeLabel = p.get("like_name") || "";
  state.page = Math.max(0, parseInt(p.get("page") || "1", 10) - 1) || 0;
  state.filters = {};
  for (const f of FILTERS) if (p.get(f)) state.filters[f] = p.get(f);
  $("q").value = state.q;
  for (const f of FILTERS) $("filters").elements[f].value = state.filters[f] || "";
  showFilterCount();
}

function writeUrl(push) {
  const p = new URLSearchParams();
  if (state.q) p.set("q", state.q);
  if (state.like) { p.set("like", state.like); if (state.likeLabel) p.set("like_name", state.likeLabel); }
  if (state.page) p.set("page", String(state.page + 1));
  for (const [f, v] of Object.entries(state.filters)) p.set(f, v);
  const url = p.toString() ? `?${p}` : location.pathname;
  if (push) history.pushState(null, "", url); else history.replaceState(null, "", url);
}

function showFilterCount() {
  const n = Object.keys(state.filters).length;
  $("filter-count").hidden = n === 0;
  $("filter-count").textContent = String(n);
}

// ------------------------------------------------------------------ search

async function run() {
  if (!state.q && !state.like && !state.upload) { render(null); return; }
  state.busy = true;
  document.body.classList.add("busy");
  $("error").hidden = true;
  const started = performance.now();
  try {
    let answer;
    const params = new URLSearchParams({ k: String(state.k), offset: String(state.page * state.k),
                                         ...state.filters });
    if (state.upload) {
      answer = await api(`/api/search?${params}`, { method: "POST", body: state.upload,
                          headers: { "Content-Type": state.upload.type || "application/octet-stream" } });
    } else {
      if (state.like) params.set("like", state.like); else params.set("q", state.q);
      answer = await api(`/api/search?${params}`);
    }
    render(answer, performance.now() - started);
  } catch (e) {
    showError(e.message);
  } finally {
    state.busy = false;
    document.body.classList.remove("busy");
  }
}

function describeQuery() {
  if (state.upload) return `similar to the uploaded ${state.upload.name || "file"}`;
  if (state.like) return `more like ${state.likeLabel || "video " + state.like}`;
  return `“${state.q}”`;
}

function render(answer, ms) {
  const grid = $("results");
  grid.replaceChildren();
  $("empty").hidden = answer !== null;
  $("pager").hidden = answer === null;
  if (answer === null) { $("status").textContent = ""; return; }
  const hits = answer.results;
  const first = state.page * state.k + 1;
  const t = answer.timing_ms;
  const range = hits.length ? `${first}–${first + hits.length - 1}` : "no";
  const matches = answer.matches !== null ? ` of ${answer.matches} matching` : "";
  $("status").replaceChildren(
    el("span", { class: "what" }, `Results ${range}${matches} for ${describeQuery()}`),
    el("span", { class: "timing", title: `encode ${t.encode} ms · FAISS ${t.faiss} ms · metadata ${t.metadata} ms · batch of ${t.batch}` },
       `${Math.round(ms)} ms`));
  if (state.like || state.upload) {
    $("status").append(el("button", { type: "button", class: "chip", onclick: () => newSearch({ q: $("q").value }) },
                          "✕ back to text search"));
  }
  if (answer.note) showError(answer.note);
  const best = hits.length ? Math.max(...hits.map((h) => h.score)) : 1;
  const worst = hits.length ? Math.min(...hits.map((h) => h.score)) : 0;
  for (const hit of hits) grid.append(card(hit, best, worst));
  if (!hits.length) grid.append(el("p", { class: "none" }, "Nothing found. Loosen the filters or try other words."));
  $("prev").disabled = state.page === 0;
  $("next").disabled = !answer.has_more;
  $("page-label").textContent = `Page ${state.page + 1}`;
}

function card(hit, best, worst) {
  const img = el("img", { src: hit.thumbnail_url, alt: hit.name, loading: "lazy", decoding: "async" });
  img.addEventListener("error", () => img.classList.add("broken"));
  const span = isSegment(hit) ? `${clock(hit.start_s)}–${clock(hit.end_s)}` : clock(hit.duration_s);
  const strength = best > worst ? (hit.score - worst) / (best - worst) : 1;
  const open = el("button", { type: "button", class: "thumb", title: `Play ${hit.name}`, onclick: () => play(hit) },
    img, el("span", { class: "rank" }, `#${hit.rank}`), el("span", { class: "span" }, span),
    el("span", { class: "play", "aria-hidden": "true" }, "▶"));
  const fill = el("i");
  fill.style.width = `${Math.round(8 + 92 * strength)}%`; // CSSOM, which the page's CSP allows
  const score = el("div", { class: "score", title: `cosine similarity ${hit.score.toFixed(4)}` },
    el("div", { class: "bar" }, fill), el("span", {}, hit.score.toFixed(3)));
  return el("article", { class: "card", "data-video-id": hit.video_id },
    open,
    el("div", { class: "meta" },
      el("div", { class: "name", title: hit.path }, hit.name),
      el("div", { class: "path", title: hit.path }, `\u200e${hit.path}\u200e`), // LRM: keeps "/" in place under rtl
      el("div", { class: "row" }, score,
        el("button", { type: "button", class: "like", onclick: () => moreLike(hit) }, "More like this"),
        ...(scenesEnabled ? [el("button", { type: "button", class: "like in-3d", title: "Reconstruct this clip in 3D",
                                            onclick: (e) => open3d(hit, e.currentTarget) }, "3D")] : []))));
}

// "3D": reconstruct the hit's clip on the server (a job), then open its viewer
async function open3d(hit, button) {
  button.disabled = true;
  try {
    let job = await api(`/api/videos/${hit.video_id}/reconstruct`, { method: "POST" });
    while (job.status === "queued" || job.status === "running") {
      button.textContent = `3D: ${job.status}…`;
      await new Promise((r) => setTimeout(r, 1000));
      job = await api(job.url);
    }
    if (job.status !== "done") throw new Error(job.error || job.status);
    button.textContent = "3D";
    location.href = job.viewer_url;
  } catch (e) {
    button.textContent = "3D";
    showError(`3D reconstruction failed: ${e.message}`);
  } finally {
    button.disabled = false;
  }
}

function newSearch(changes, push = true) {
  Object.assign(state, { like: null, likeLabel: "", upload: null, page: 0 }, changes);
  writeUrl(push);
  run();
}

function moreLike(hit) {
  closePlayer();
  const label = isSegment(hit) ? `${hit.name} ${clock(hit.start_s)}–${clock(hit.end_s)}` : hit.name;
  newSearch({ q: "", like: hit.video_id, likeLabel: label });
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
}

// ------------------------------------------------------------------ player

function play(hit) {
  playing = hit;
  const video = $("video");
  const segment = isSegment(hit);
  clipEnd = segment ? hit.end_s : null;
  $("player-title").textContent = hit.name;
  $("player-meta").textContent = `${hit.path} · ${segment ? `${hit.segment === "shot" ? "shot" : "clip"} ${clock(hit.start_s)}–${clock(hit.end_s)} of ` : ""}${clock(hit.duration_s)} · score ${hit.score.toFixed(3)} · ${hit.index}`;
  $("player-download").href = hit.media_url;
  $("player-error").hidden = true;
  video.hidden = false;
  video.dataset.start = String(hit.start_s || 0);
  video.src = hit.media_url;
  video.addEventListener("loadedmetadata", () => {
    video.currentTime = hit.start_s || 0;
    video.play().catch(() => { /* autoplay refused: the controls are there */ });
  }, { once: true });
  if (!$("player").open) $("player").showModal();
}

function closePlayer() {
  const video = $("video");
  video.pause();
  video.removeAttribute("src");
  video.load();
  if ($("player").open) $("player").close();
}

function setupPlayer() {
  const video = $("video");
  video.addEventListener("timeupdate", () => {
    if (clipEnd !== null && video.currentTime >= clipEnd) { video.pause(); video.currentTime = clipEnd; }
  });
  video.addEventListener("error", () => {
    if (!video.getAttribute("src")) return;
    const ext = (playing && playing.name.split(".").pop().toLowerCase()) || "this";
    $("player-error").textContent = `This browser cannot play .${ext} files. Download the video and open it in a player (seek to ${clock(playing ? playing.start_s : 0)}).`;
    $("player-error").hidden = false;
    video.hidden = true;
  });
  $("player-close").addEventListener("click", closePlayer);
  $("player").addEventListener("close", closePlayer);
  $("player").addEventListener("click", (e) => { if (e.target === $("player")) closePlayer(); });
  $("player-like").addEventListener("click", () => playing && moreLike(playing));
  $("player-replay").addEventListener("click", () => {
    if (!playing) return;
    video.currentTime = playing.start_s || 0;
    video.play().catch(() => {});
  });
}

// ------------------------------------------------------------------ uploads

function searchUpload(file) {
  if (!file) return;
  const limit = stats ? stats.limits.max_upload_mb : 32;
  if (file.size > limit * 1048576) { showError(`${file.name} is larger than ${limit} MB`); return; }
  Object.assign(state, { upload: file, like: null, q: "", page: 0 });
  $("q").value = "";
  run();
}

function setupUploads() {
  $("upload-button").addEventListener("click", () => $("upload").click());
  $("upload").addEventListener("change", (e) => { searchUpload(e.target.files[0]); e.target.value = ""; });
  let depth = 0;
  window.addEventListener("dragenter", (e) => { if (e.dataTransfer.types.includes("Files")) { depth++; $("drop").hidden = false; } });
  window.addEventListener("dragleave", () => { depth = Math.max(0, depth - 1); if (!depth) $("drop").hidden = true; });
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => {
    e.preventDefault();
    depth = 0;
    $("drop").hidden = true;
    searchUpload(e.dataTransfer.files[0]);
  });
}

// ------------------------------------------------------------------ start

function showStats(s) {
  stats = s;
  const banner = $("weights-banner");
  if (s.random_weights) {
    banner.className = "banner danger";
    banner.textContent = `This index was built with RANDOM weights (${s.weights_id}): scores and rankings are not meaningful. Rebuild it with pretrained weights for real search.`;
  } else {
    banner.className = "banner quiet";
    banner.textContent = `Weights: ${s.weights_id}`;
  }
  banner.hidden = false;
  const model = s.model || {};
  $("index-info").textContent = `${s.rows.toLocaleString()} clips · ${s.videos.toLocaleString()} videos`;
  $("index-info").title = `${s.indexes.map((i) => `${i.name}: ${i.rows} rows, ${i.faiss}`).join("\n")}\nmodel ${model.arch} (${model.preset}, ${model.num_frames} frames)`;
}

async function start() {
  setupPlayer();
  setupUploads();
  $("search-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const q = $("q").value.trim();
    if (q) newSearch({ q });
  });
  $("filters-button").addEventListener("click", () => {
    const panel = $("filters");
    panel.hidden = !panel.hidden;
    $("filters-button").setAttribute("aria-expanded", String(!panel.hidden));
  });
  $("filters").addEventListener("submit", (e) => {
    e.preventDefault();
    state.filters = {};
    for (const f of FILTERS) { const v = $("filters").elements[f].value.trim(); if (v) state.filters[f] = v; }
    showFilterCount();
    state.page = 0;
    writeUrl(true);
    run();
  });
  $("clear-filters").addEventListener("click", () => {
    for (const f of FILTERS) $("filters").elements[f].value = "";
    $("filters").requestSubmit();
  });
  $("prev").addEventListener("click", () => { if (state.page > 0) { state.page--; writeUrl(true); run(); scrollTo(0, 0); } });
  $("next").addEventListener("click", () => { state.page++; writeUrl(true); run(); scrollTo(0, 0); });
  document.addEventListener("keydown", (e) => {
    const typing = ["INPUT", "TEXTAREA"].includes(document.activeElement.tagName);
    if (e.key === "/" && !typing) { e.preventDefault(); $("q").focus(); $("q").select(); }
    if (!typing && !$("player").open && e.key === "ArrowRight" && !$("next").disabled && !$("pager").hidden) $("next").click();
    if (!typing && !$("player").open && e.key === "ArrowLeft" && !$("prev").disabled && !$("pager").hidden) $("prev").click();
  });
  window.addEventListener("popstate", () => { state.upload = null; readUrl(); run(); });
  readUrl();
  try {
    const s = await api("/api/stats");
    showStats(s);
    state.k = Math.min(24, s.limits.max_k);
    scenesEnabled = await api("/api/scenes").then(() => true, () => false);
    $("scenes-tab").hidden = !scenesEnabled;
  } catch (e) {
    showError(`The server did not answer: ${e.message}`);
  }
  document.body.dataset.ready = "1";
  run();
}

document.addEventListener("DOMContentLoaded", start);
