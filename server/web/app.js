// The attribution page: one form, the API's JSON rendered with DOM calls (text is never
// parsed as HTML), token colours set through the CSSOM (allowed by the page's CSP).
"use strict";

const $ = (id) => document.getElementById(id);
const KEY_STORE = "lorif-api-key";
const MENU_MAX = 50;
// Chunking's own bookkeeping: shown through the id and the text, not offered as menus.
const CHUNK_FIELDS = new Set(["doc_id", "title", "chunk", "span", "prompt_chars"]);

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = text;
  if (cls) node.className = cls;
  return node;
}

function headers() {
  const h = { "Content-Type": "application/json", Accept: "application/json" };
  const key = $("api-key").value.trim();
  if (key) h.Authorization = "Bearer " + key;
  return h;
}

// GET (no body) or POST JSON; errors become {status, title, detail} from problem details.
async function call(path, body) {
  const init = body === undefined ? { headers: headers() }
    : { method: "POST", headers: headers(), body: JSON.stringify(body) };
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    throw { status: 0, title: "no answer from the server", detail: String(err) };
  }
  const raw = await response.text();
  let data = null;
  try { data = JSON.parse(raw); } catch (_) { data = null; }
  if (!response.ok) {
    const problem = data || {};
    throw {
      status: response.status,
      title: problem.title || response.statusText || "error",
      detail: typeof problem.detail === "string" ? problem.detail : raw.slice(0, 400),
    };
  }
  return data;
}

// ``source`` names what failed ("index" or "query"), so that a later success of the one
// does not hide the other's problem.
function showError(problem, source) {
  const box = $("error");
  box.dataset.source = source;
  box.replaceChildren(el("strong", `${problem.status || ""} ${problem.title}`.trim()));
  if (problem.detail) box.append(el("span", problem.detail));
  box.hidden = false;
  if (problem.status === 401) $("key-box").open = true;
}

function clearError(source) {
  const box = $("error");
  if (source === undefined || box.dataset.source === source) box.hidden = true;
}

function colour(score, scale) {
  const alpha = scale > 0 ? Math.min(1, Math.abs(score) / scale) * 0.8 : 0;
  return score >= 0 ? `rgba(46, 139, 87, ${alpha})` : `rgba(192, 57, 43, ${alpha})`;
}

function fmt(x) { return Math.abs(x) >= 1e4 || (x !== 0 && Math.abs(x) < 1e-3) ? x.toExponential(2) : x.toFixed(3); }

// The text with each token span coloured by its score (gaps between tokens stay plain).
function highlighted(text, tokens, cls) {
  const box = el("div", null, cls);
  const scale = Math.max(1e-12, ...tokens.map((t) => Math.abs(t.score)));
  let at = 0;
  for (const token of [...tokens].sort((a, b) => a.start - b.start)) {
    if (token.start < at || token.end <= token.start) continue;
    if (token.start > at) box.append(document.createTextNode(text.slice(at, token.start)));
    const span = el("span", text.slice(token.start, token.end), "tok");
    span.style.backgroundColor = colour(token.score, scale);
    span.title = fmt(token.score);
    span.dataset.score = String(token.score);
    box.append(span);
    at = token.end;
  }
  if (at < text.length) box.append(document.createTextNode(text.slice(at)));
  return box;
}

function bar(value, scale) {
  const outer = el("div", null, "bar " + (value >= 0 ? "pos" : "neg"));
  const inner = el("span");
  inner.style.width = `${scale > 0 ? Math.min(100, (100 * Math.abs(value)) / scale) : 0}%`;
  outer.append(inner);
  return outer;
}

function layerTable(parts) {
  const details = el("details", null, "layers");
  details.append(el("summary", "per-layer breakdown"));
  const table = el("table");
  const scale = Math.max(1e-12, ...parts.map((p) => Math.abs(p.score)));
  for (const part of parts) {
    const row = el("tr");
    const cell = el("td", null, "bar-cell");
    cell.append(bar(part.score, scale));
    row.append(el("td", part.layer, "name"), cell, el("td", fmt(part.score), "score"));
    table.append(row);
  }
  details.append(table);
  details.addEventListener("click", (event) => event.stopPropagation());
  return details;
}

function card(item, scale, onSelect) {
  const li = el("li", null, "result");
  const head = el("div", null, "head");
  head.append(el("span", `#${item.rank}`, "rank"), el("span", item.id, "id"),
    bar(item.score, scale), el("span", fmt(item.score), "score"));
  li.append(head);
  const meta = el("div", null, "meta");
  for (const [key, value] of Object.entries(item.metadata || {})) {
    if (key === "span" || key === "title") continue;
    meta.append(el("span", `${key}: ${value}`));
  }
  li.append(meta);
  const explanation = item.explanation;
  if (explanation && item.text) {
    li.append(highlighted(item.text, explanation.tokens, "text"));
  } else if (item.text) {
    li.append(el("div", item.text, "text"));
  }
  if (explanation) {
    li.append(layerTable(explanation.layers));
    li.append(el("div", `token parts sum to ${fmt(explanation.recomputed_score)} (dense gradient)`
      + ` vs stored ${fmt(item.score)}` + (explanation.tokens_match ? "" : "; re-tokenized text differs"), "note"));
  }
  li.addEventListener("click", () => onSelect(li, item));
  return li;
}

function showCompletion(query, completion, item) {
  const view = $("completion-tokens");
  const tokens = (query.explanation && query.explanation.completion_tokens) || [];
  if (!tokens.length) { view.replaceChildren(el("span", completion)); return; }
  const parts = item && item.explanation ? item.explanation.completion : null;
  const scored = tokens.map((t, i) => ({ ...t, score: parts ? parts[i] : 0 }));
  view.replaceChildren(highlighted(completion, scored, "tokens"));
  $("completion-hint").textContent = item
    ? `coloured by how much ${item.id} supports each token (green: more likely)`
      + (query.explanation.capped ? "; only the first tokens are explained" : "")
    : "Select an example to colour the completion's tokens by how much it supports each.";
}

function render(answer, completion) {
  const all = [...answer.results, ...(answer.opponents || [])];
  const scale = Math.max(1e-12, ...all.map((r) => Math.abs(r.score)));
  const q = answer.query;
  $("query-meta").textContent = `${q.completion_tokens} tokens, loss ${q.loss.toFixed(2)}`
    + (q.matching !== undefined ? `; ${q.matching} examples match the filter` : "")
    + `; ${answer.timings.total_ms.toFixed(0)} ms`;
  $("query-view").hidden = false;
  const select = (li, item) => {
    document.querySelectorAll(".result.selected").forEach((n) => n.classList.remove("selected"));
    li.classList.add("selected");
    showCompletion(q, completion, item);
  };
  const lists = [[$("proponents"), answer.results], [$("opponents-list"), answer.opponents || []]];
  for (const [list, items] of lists) list.replaceChildren(...items.map((it) => card(it, scale, select)));
  if (!answer.results.length) $("proponents").append(el("li", "no example matches", "muted"));
  $("opponents-column").hidden = !answer.opponents;
  $("results").className = answer.opponents ? "" : "single";
  $("results").hidden = false;
  showCompletion(q, completion, null);
  const first = $("proponents").querySelector(".result");
  if (first && answer.results[0].explanation) select(first, answer.results[0]);
}

function filterBody() {
  const conditions = {};
  for (const select of document.querySelectorAll("#filters select")) {
    if (select.value !== "") conditions[select.dataset.field] = JSON.parse(select.value);
  }
  const prefix = $("id-prefix").value.trim();
  if (prefix) conditions.id = { prefix };
  return Object.keys(conditions).length ? conditions : undefined;
}

async function ask(event) {
  event.preventDefault();
  clearError();
  const completion = $("completion").value;
  const body = {
    prompt: $("prompt").value, completion, top_k: Number($("top-k").value) || 10,
    opponents: $("opponents").checked, explain: $("explain").checked, filter: filterBody(),
  };
  $("ask").disabled = true;
  try {
    render(await call("/v1/attributions", body), completion);
  } catch (problem) {
    showError(problem, "query");
  } finally {
    $("ask").disabled = false;
  }
}

function menus(fields) {
  const box = $("filters");
  box.replaceChildren();
  for (const field of fields) {
    if (field.kind === "id" || CHUNK_FIELDS.has(field.name) || !field.values || field.values.length < 2 || field.values.length > MENU_MAX) continue;
    const label = el("label", field.name);
    const select = el("select");
    select.dataset.field = field.name;
    select.append(new Option("any", ""));
    for (const value of field.values) select.append(new Option(String(value), JSON.stringify(value)));
    label.append(select);
    box.append(label);
  }
}

async function loadIndex() {
  try {
    const info = await call("/v1/index");
    $("index-line").textContent = `${info.name}: ${info.n_examples.toLocaleString()} examples, ${info.method}`;
    menus(info.filter_fields || []);
    clearError("index");
  } catch (problem) {
    $("index-line").textContent = "index details need a key";
    showError(problem, "index");
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("api-key").value = localStorage.getItem(KEY_STORE) || "";
  $("api-key").addEventListener("change", () => {
    const key = $("api-key").value.trim();
    if (key === (localStorage.getItem(KEY_STORE) || "")) return;  // a blur, not a new key
    localStorage.setItem(KEY_STORE, key);
    loadIndex();
  });
  $("query-form").addEventListener("submit", ask);
  loadIndex();
});
