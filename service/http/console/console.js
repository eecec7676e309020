// The pqrag console: one page over pqrag's own HTTP API (no framework, no build step, nothing from a CDN).
// Collections (counts, index state), ingestion by drag-and-drop with upload progress, search with the matched span
// highlighted, and a chat that streams its answer (POST /v1/chat/completions with "stream": true and the "rag"
// extension) with clickable citations that open the cited span inside its document.
"use strict";

const $ = (selector) => document.querySelector(selector);
const state = {
  collection: null, // the selected collection's name
  collections: [],
  model: null, // the served generator's name (GET /v1/models)
  history: [], // the conversation sent with every question: [{role, content}]
};

// ---- HTTP --------------------------------------------------------------------------------------------------------

function authHeaders(extra = {}) {
  const key = localStorage.getItem("pqrag-api-key");
  return key ? { ...extra, authorization: `Bearer ${key}` } : extra;
}

async function api(method, path, body) {
  const options = { method, headers: authHeaders(body === undefined ? {} : { "content-type": "application/json" }) };
  if (body !== undefined) options.body = JSON.stringify(body);
  const response = await fetch(path, options);
  const type = response.headers.get("content-type") || "";
  const data = type.includes("json") ? await response.json() : null;
  if (!response.ok) throw new Error((data && data.error && data.error.message) || response.statusText);
  return data;
}

const enc = encodeURIComponent;

function escapeHtml(text) {
  return text.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

function toast(message) {
  const el = $("#toast");
  el.textContent = message;
  el.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => (el.hidden = true), 6000);
}

// ---- status and models -------------------------------------------------------------------------------------------

async function refreshStatus() {
  const el = $("#status");
  try {
    const health = await (await fetch("/health")).json();
    el.textContent = health.status === "serving" ? "serving" : "not serving";
    el.className = `status ${health.status}`;
    const engine = health.engine || {};
    el.title = `engine ${engine.state}` + (engine.kv_usage !== undefined ? `, KV cache ${(100 * engine.kv_usage).toFixed(0)}% used` : "");
  } catch (err) {
    el.textContent = "unreachable";
    el.className = "status not_serving";
  }
}

async function loadModels() {
  try {
    const models = await api("GET", "/v1/models");
    const generator = models.data.find((m) => m.type === "generator");
    state.model = generator ? generator.id : null;
    $("#model").textContent = generator ? `generator ${generator.id}` : "no generator: search only";
  } catch (err) {
    $("#model").textContent = err.message;
  }
}

// ---- collections -------------------------------------------------------------------------------------------------

async function refreshCollections() {
  try {
    state.collections = (await api("GET", "/v1/collections")).data;
  } catch (err) {
    toast(`collections: ${err.message}`);
    return;
  }
  const names = state.collections.map((c) => c.name);
  if (!names.includes(state.collection)) state.collection = names.length ? names[0] : null;
  const body = $("#collections tbody");
  body.innerHTML = "";
  for (const c of state.collections) {
    const row = document.createElement("tr");
    row.dataset.name = c.name;
    row.className = c.name === state.collection ? "selected" : "";
    row.innerHTML = `<td>${escapeHtml(c.name)}</td><td>${c.document_count}</td><td>${c.chunk_count}</td>` +
      `<td>${escapeHtml(c.index_state)}${c.training ? " (training)" : ""}</td>`;
    row.addEventListener("click", () => selectCollection(c.name));
    body.appendChild(row);
  }
  // A search mode exists when the collections have one (hybrid search): offer the choice.
  $("#mode-label").hidden = !state.collections.some((c) => c.search_mode !== undefined);
  for (const el of document.querySelectorAll(".current-collection")) el.textContent = state.collection || "—";
}

function selectCollection(name) {
  state.collection = name;
  for (const row of document.querySelectorAll("#collections tbody tr")) {
    row.className = row.dataset.name === name ? "selected" : "";
  }
  for (const el of document.querySelectorAll(".current-collection")) el.textContent = name;
}

$("#create-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const name = $("#create-name").value.trim();
  try {
    await api("POST", "/v1/collections", { name });
    $("#create-name").value = "";
    state.collection = name;
    await refreshCollections();
  } catch (err) {
    toast(`create ${name}: ${err.message}`);
  }
});

// ---- ingestion: drag-and-drop with upload progress ---------------------------------------------------------------

function uploadFile(collection, file) {
  const item = document.createElement("li");
  item.innerHTML = `<span class="name">${escapeHtml(file.name)}</span> <progress max="1" value="0"></progress> <span class="result muted">uploading</span>`;
  $("#uploads").prepend(item);
  const bar = item.querySelector("progress");
  const result = item.querySelector(".result");
  return new Promise((resolve) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", `/v1/collections/${enc(collection)}/documents`);
    for (const [k, v] of Object.entries(authHeaders())) xhr.setRequestHeader(k, v);
    xhr.upload.onprogress = (e) => {
      if (e.lengthComputable) bar.value = e.loaded / e.total;
      if (bar.value >= 1) result.textContent = "indexing";
    };
    xhr.onload = () => {
      bar.value = 1;
      let data = null;
      try { data = JSON.parse(xhr.responseText); } catch (err) { /* not JSON: reported below */ }
      if (xhr.status === 200 && data) {
        const file = data.data[0];
        item.dataset.state = file.error ? "error" : "done";
        result.textContent = file.error ? file.error : `${file.document_ids.length} documents, ${file.chunk_count} chunks`;
      } else {
        item.dataset.state = "error";
        result.textContent = (data && data.error && data.error.message) || `HTTP ${xhr.status}`;
      }
      result.classList.toggle("error", item.dataset.state === "error");
      resolve();
    };
    xhr.onerror = () => {
      item.dataset.state = "error";
      result.textContent = "upload failed (connection)";
      resolve();
    };
    const form = new FormData();
    form.append("file", file, file.name);
    xhr.send(form);
  });
}

async function uploadAll(files) {
  if (!state.collection) return toast("create or select a collection first");
  const collection = state.collection;
  for (const file of files) await uploadFile(collection, file); // one at a time: one progress bar moving
  await refreshCollections();
}

const dropzone = $("#dropzone");
dropzone.addEventListener("dragover", (e) => { e.preventDefault(); dropzone.classList.add("over"); });
dropzone.addEventListener("dragleave", () => dropzone.classList.remove("over"));
dropzone.addEventListener("drop", (e) => {
  e.preventDefault();
  dropzone.classList.remove("over");
  uploadAll([...e.dataTransfer.files]);
});
$("#file-input").addEventListener("change", (e) => { uploadAll([...e.target.files]); e.target.value = ""; });

// ---- the document viewer: the cited or matched span inside its document -----------------------------------------

async function openDocument(collection, documentId, start, end) {
  let doc;
  try {
    doc = await api("GET", `/v1/collections/${enc(collection)}/documents/${enc(documentId)}`);
  } catch (err) {
    return toast(`${documentId}: ${err.message}`);
  }
  const text = doc.text;
  $("#viewer-title").textContent = doc.id;
  $("#viewer-meta").textContent = `${doc.source || ""} · characters ${start}–${end} of ${text.length}`;
  $("#viewer-text").innerHTML = escapeHtml(text.slice(0, start)) + `<mark id="span">${escapeHtml(text.slice(start, end))}</mark>` + escapeHtml(text.slice(end));
  $("#viewer").hidden = false;
  $("#span").scrollIntoView({ block: "center" });
}

$("#viewer-close").addEventListener("click", () => ($("#viewer").hidden = true));

// ---- search ------------------------------------------------------------------------------------------------------

function highlightTerms(text, query) {
  const words = query.toLowerCase().match(/[\p{L}\p{N}]{3,}/gu) || [];
  let html = escapeHtml(text);
  if (!words.length) return html;
  const pattern = new RegExp(`(${words.map((w) => w.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")).join("|")})`, "giu");
  return html.replace(pattern, "<mark>$1</mark>");
}

$("#search-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  if (!state.collection) return toast("create or select a collection first");
  const query = $("#query").value.trim();
  if (!query) return;
  const body = { query, top_k: Number($("#search-k").value) || undefined };
  const filter = $("#filter").value.trim();
  if (filter) {
    try { body.filter = JSON.parse(filter); } catch (err) { return toast(`filter is not JSON: ${err.message}`); }
  }
  if (!$("#mode-label").hidden && $("#mode").value) body.mode = $("#mode").value;
  const collection = state.collection;
  let result;
  try {
    result = await api("POST", `/v1/collections/${enc(collection)}/search`, body);
  } catch (err) {
    return toast(`search: ${err.message}`);
  }
  $("#search-info").textContent = `${result.data.length} hits · embed ${result.embed_ms.toFixed(1)} ms, search ${result.search_ms.toFixed(1)} ms`;
  const list = $("#hits");
  list.innerHTML = "";
  for (const hit of result.data) {
    const item = document.createElement("li");
    item.className = "hit";
    item.innerHTML = `<div><a href="#" class="doc">${escapeHtml(hit.document_id)}</a> <span class="muted">` +
      `${escapeHtml(hit.source || "")} · score ${hit.score.toFixed(3)} · chars ${hit.start}–${hit.end}</span></div>` +
      `<div class="snippet">${highlightTerms(hit.text, query)}</div>`;
    item.querySelector("a.doc").addEventListener("click", (e) => {
      e.preventDefault();
      openDocument(collection, hit.document_id, hit.start, hit.end);
    });
    list.appendChild(item);
  }
});

// ---- chat: a streamed answer with clickable citations ------------------------------------------------------------

function renderAnswer(message) {
  // [n] in the answer becomes a link to citation n when there is one.
  const numbers = new Set(message.citations.map((c) => String(c.number)));
  message.textEl.innerHTML = escapeHtml(message.text).replace(/\[(\d+)\]/g, (m, n) =>
    numbers.has(n) ? `<a href="#" class="cite" data-n="${n}">[${n}]</a>` : m);
}

function renderCitations(message) {
  const list = message.el.querySelector("ol.citations");
  list.innerHTML = "";
  for (const c of message.citations) {
    const item = document.createElement("li");
    item.innerHTML = `<a href="#" class="cite" data-n="${c.number}">[${c.number}] ${escapeHtml(c.document_id)}</a> ` +
      `<span class="muted">${escapeHtml(c.source || "")} · score ${c.score.toFixed(3)}</span>`;
    list.appendChild(item);
  }
}

function addMessage(role, text) {
  const el = document.createElement("div");
  el.className = `message ${role}`;
  el.innerHTML = `<div class="text"></div>` + (role === "assistant" ? `<ol class="citations"></ol>` : "");
  el.querySelector(".text").textContent = text;
  $("#messages").appendChild(el);
  return el;
}

async function ask(question) {
  const collection = state.collection;
  state.history.push({ role: "user", content: question });
  addMessage("user", question);
  const el = addMessage("assistant", "");
  const message = { el, textEl: el.querySelector(".text"), text: "", citations: [], collection, chunks: 0 };
  el.message = message;
  el.dataset.done = "false";
  const request = {
    model: state.model || undefined,
    messages: state.history,
    stream: true,
    max_tokens: Number($("#chat-max").value) || undefined,
    rag: { collection, top_k: Number($("#chat-k").value) || undefined },
  };
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: authHeaders({ "content-type": "application/json" }),
      body: JSON.stringify(request),
    });
    if (!response.ok) {
      const data = await response.json().catch(() => null);
      throw new Error((data && data.error && data.error.message) || response.statusText);
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) { // one server-sent event: "data: {...}"
        const event = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        if (!event.startsWith("data: ")) continue;
        const payload = event.slice(6);
        if (payload === "[DONE]") continue;
        const chunk = JSON.parse(payload);
        if (chunk.error) throw new Error(chunk.error.message);
        if (chunk.citations) {
          message.citations = chunk.citations;
          renderCitations(message);
        }
        const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
        if (delta && delta.content) {
          message.text += delta.content;
          message.chunks += 1;
          el.dataset.chunks = message.chunks;
          renderAnswer(message);
          $("#work").scrollTop = $("#work").scrollHeight; // follow the answer as it grows
        }
      }
    }
    state.history.push({ role: "assistant", content: message.text });
  } catch (err) {
    state.history.pop(); // the question was not answered: don't send it again as history
    message.textEl.classList.add("error");
    message.textEl.textContent = err.message;
  }
  el.dataset.done = "true";
}

$("#chat-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const question = $("#question").value.trim();
  if (!question) return;
  if (!state.collection) return toast("create or select a collection first");
  $("#question").value = "";
  ask(question);
});

$("#reset").addEventListener("click", () => {
  state.history = [];
  $("#messages").innerHTML = "";
});

$("#messages").addEventListener("click", (event) => {
  const link = event.target.closest("a.cite");
  if (!link) return;
  event.preventDefault();
  const message = link.closest(".message").message;
  const c = message.citations.find((x) => String(x.number) === link.dataset.n);
  if (c) openDocument(message.collection, c.document_id, c.start, c.end);
});

// ---- tabs, the API key, start ------------------------------------------------------------------------------------

for (const tab of document.querySelectorAll(".tabs button")) {
  tab.addEventListener("click", () => {
    for (const t of document.querySelectorAll(".tabs button")) t.classList.toggle("active", t === tab);
    for (const p of document.querySelectorAll(".panel")) p.classList.toggle("active", p.id === tab.dataset.tab);
  });
}

$("#api-key").value = localStorage.getItem("pqrag-api-key") || "";
$("#api-key").addEventListener("change", (e) => {
  const key = e.target.value.trim();
  key ? localStorage.setItem("pqrag-api-key", key) : localStorage.removeItem("pqrag-api-key");
  loadModels();
  refreshCollections();
});

refreshStatus();
loadModels();
refreshCollections();
setInterval(refreshStatus, 10000);
