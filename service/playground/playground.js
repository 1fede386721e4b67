// The ernie-cls playground: no framework, no build step, no CDN. Talks to the same REST API as any client.
"use strict";

const STRINGS = {
  zh: {
    subtitle: "中文文本分类 · 试一试", model: "模型", key: "API 密钥", keyHint: "服务未设密钥时留空",
    textsHint: "每行一条文本", classify: "分类", explain: "为什么？", lowConfidence: "模型不确定：置信度低于阈值",
    truncated: "文本过长，已截断", csvTitle: "批量：上传 CSV", column: "文本列", csvRun: "分类整列",
    download: "下载结果 CSV", working: "处理中…", done: "完成", noTexts: "请输入至少一条文本",
    legend: "红色：支持该标签的字；蓝色：反对该标签的字", rows: "行", lang: "English",
  },
  en: {
    subtitle: "Chinese text classification · try it", model: "Model", key: "API key",
    keyHint: "leave empty if the service has no keys", textsHint: "one text per line", classify: "Classify",
    explain: "Why?", lowConfidence: "The model is unsure: score below the threshold", truncated: "Text too long: truncated",
    csvTitle: "Batch: upload a CSV", column: "Text column", csvRun: "Classify the column", download: "Download results CSV",
    working: "Working…", done: "Done", noTexts: "Type at least one text", legend: "Red: characters that support the label; blue: against it",
    rows: "rows", lang: "中文",
  },
};
const BATCH = 32; // texts per request (the service's default limit is 64)
let lang = (navigator.languages || [navigator.language || ""]).some((l) => l.toLowerCase().startsWith("zh")) ? "zh" : "en";
const params = new URLSearchParams(location.search);
if (params.get("lang") === "zh" || params.get("lang") === "en") lang = params.get("lang");
const $ = (id) => document.getElementById(id);
const t = (key) => STRINGS[lang][key] || STRINGS.en[key] || key;

function applyLanguage() {
  document.documentElement.lang = lang === "zh" ? "zh-CN" : "en";
  document.querySelectorAll("[data-i18n]").forEach((el) => { el.textContent = t(el.dataset.i18n); });
  document.querySelectorAll("[data-i18n-placeholder]").forEach((el) => { el.placeholder = t(el.dataset.i18nPlaceholder); });
  $("lang").textContent = t("lang");
}

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("key").value.trim();
  if (key) h.Authorization = "Bearer " + key;
  return h;
}

async function api(path, body) {
  const reply = await fetch(path, body === undefined ? { headers: headers() } : { method: "POST", headers: headers(), body: JSON.stringify(body) });
  const data = await reply.json().catch(() => ({}));
  if (!reply.ok) {
    const e = data.error || {};
    throw new Error(`${reply.status} ${e.message || reply.statusText} ${e.hint || ""}`.trim());
  }
  return data;
}

async function loadModels() {
  try {
    const data = await api("v1/models");
    const select = $("model");
    select.replaceChildren();
    for (const m of data.models) {
      const stable = m.versions.find((v) => v.variant === "stable") || m.versions[0];
      const option = new Option(`${m.id} (${stable.name} ${stable.version})`, m.id, m.default, m.default);
      option.dataset.labels = String(stable.labels.length);
      select.append(option);
    }
  } catch (err) {
    showError($("status"), err);
  }
}

function showError(el, err) {
  el.textContent = err.message;
  el.className = "error";
}

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}

function renderPrediction(text, p) {
  const card = el("div", "result");
  card.append(el("div", "text", text));
  if (p.low_confidence) card.append(el("div", "warning", "⚠ " + t("lowConfidence")));
  p.top_k.forEach((ls, i) => {
    const row = el("div", "bar-row" + (i === 0 ? " best" : ""));
    row.dataset.label = ls.label;
    const bar = el("div", "bar");
    const fill = el("div");
    fill.style.width = (100 * ls.score).toFixed(1) + "%";
    bar.append(fill);
    row.append(el("span", "label", ls.label), bar, el("span", "score", (100 * ls.score).toFixed(1) + "%"));
    card.append(row);
  });
  if (p.truncated) card.append(el("span", "flag", t("truncated")));
  const why = el("button", "why", t("explain"));
  why.type = "button";
  why.addEventListener("click", () => explain(text, card, why));
  card.append(why);
  return card;
}

async function explain(text, card, button) {
  button.disabled = true;
  try {
    const data = await api(`v1/models/${encodeURIComponent($("model").value)}/explain`, { text });
    const box = el("div", "explained");
    const peak = Math.max(1e-9, ...data.pieces.map((p) => Math.abs(p.attribution)));
    let at = 0;
    for (const piece of data.pieces) {
      if (piece.start > at) box.append(document.createTextNode(data.text.slice(at, piece.start)));
      const span = el("span", "piece", data.text.slice(piece.start, piece.end));
      const alpha = Math.abs(piece.attribution) / peak;
      span.style.background = piece.attribution >= 0 ? `rgba(220, 50, 47, ${alpha.toFixed(3)})` : `rgba(38, 139, 210, ${alpha.toFixed(3)})`;
      span.title = piece.attribution.toFixed(4);
      span.dataset.attribution = piece.attribution;
      box.append(span);
      at = piece.end;
    }
    if (at < data.text.length) box.append(document.createTextNode(data.text.slice(at)));
    card.append(box, el("div", "legend", `${data.label}: ${t("legend")}`));
  } catch (err) {
    const msg = el("div", "error");
    showError(msg, err);
    card.append(msg);
  } finally {
    button.disabled = false;
  }
}

async function classifyTexts(texts) {
  const out = [];
  for (let i = 0; i < texts.length; i += BATCH) {
    const model = $("model").selectedOptions[0];
    const topK = Math.min(3, Number(model.dataset.labels) || 1); // top-3, or every label of a 2-label model
    const data = await api(`v1/models/${encodeURIComponent(model.value)}/classify`, { texts: texts.slice(i, i + BATCH), top_k: topK, truncate: true });
    out.push(...data.predictions);
  }
  return out;
}

async function classifyBox() {
  const texts = $("texts").value.split("\n").map((s) => s.trim()).filter(Boolean);
  const status = $("status");
  status.className = "";
  if (!texts.length) { status.textContent = t("noTexts"); return; }
  status.textContent = t("working");
  try {
    const predictions = await classifyTexts(texts);
    $("results").replaceChildren(...predictions.map((p, i) => renderPrediction(texts[i], p)));
    status.textContent = t("done");
  } catch (err) {
    showError(status, err);
  }
}

// RFC 4180 CSV: a field is quoted only if its first character is a quote (doubled quotes inside); a quote
// elsewhere is an ordinary character, as spreadsheets write it.
function parseCsv(source) {
  const rows = [];
  let row = [], field = "", quoted = false, fieldStart = true;
  const endField = () => { row.push(field); field = ""; fieldStart = true; };
  for (let i = 0; i < source.length; i++) {
    const c = source[i];
    if (quoted) {
      if (c === '"' && source[i + 1] === '"') { field += '"'; i++; } else if (c === '"') quoted = false; else field += c;
    } else if (c === '"' && fieldStart) { quoted = true; fieldStart = false; }
    else if (c === ",") endField();
    else if (c === "\n" || c === "\r") {
      if (c === "\r" && source[i + 1] === "\n") i++;
      endField(); rows.push(row); row = [];
    } else { field += c; fieldStart = false; }
  }
  if (field !== "" || row.length) { endField(); rows.push(row); }
  return rows.filter((r) => r.length > 1 || r[0] !== "");
}

// A cell a spreadsheet would run as a formula (=, +, -, @) is written with a leading apostrophe.
const safeCell = (v) => (/^[=+\-@\t\r]/.test(v) ? "'" + v : v);
const csvField = (v) => { const s = safeCell(String(v)); return /[",\r\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s; };
let table = null;

// UTF-8, or GB18030 (what Excel saves Chinese CSV files as) when the bytes are not valid UTF-8.
async function readText(file) {
  const bytes = await file.arrayBuffer();
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    return new TextDecoder("gb18030").decode(bytes);
  }
}

async function loadCsv(file) {
  table = parseCsv((await readText(file)).replace(/^\uFEFF/, ""));
  const width = (table[0] || []).length;
  table = table.map((r) => (r.length < width ? r.concat(Array(width - r.length).fill("")) : r)); // short rows padded
  const select = $("column");
  select.replaceChildren(...(table[0] || []).map((name, i) => new Option(name, String(i))));
  const guess = (table[0] || []).findIndex((n) => /text|review|内容|文本|评论/i.test(n));
  if (guess >= 0) select.value = String(guess);
  $("csvRun").disabled = !table.length;
  $("csvStatus").textContent = `${Math.max(0, table.length - 1)} ${t("rows")}`;
}

async function classifyCsv() {
  const status = $("csvStatus");
  status.className = "";
  status.textContent = t("working");
  const col = Number($("column").value);
  const rows = table.slice(1);
  try {
    // empty cells are not sent (the service refuses empty texts): their rows get empty results
    const filled = rows.map((r, i) => [i, (r[col] || "").trim()]).filter(([, text]) => text);
    const predictions = await classifyTexts(filled.map(([, text]) => text));
    const byRow = new Map(filled.map(([i], k) => [i, predictions[k]]));
    const lines = [[...table[0], "label", "score", "low_confidence"].map(csvField).join(",")];
    rows.forEach((r, i) => {
      const p = byRow.get(i);
      const result = p ? [p.label, p.score.toFixed(4), String(p.low_confidence)] : ["", "", ""];
      lines.push([...r, ...result].map(csvField).join(","));
    });
    const link = $("download");
    link.href = URL.createObjectURL(new Blob(["\uFEFF" + lines.join("\r\n") + "\r\n"], { type: "text/csv" }));
    link.hidden = false;
    status.textContent = `${t("done")}: ${filled.length} / ${rows.length} ${t("rows")}`;
  } catch (err) {
    showError(status, err);
  }
}

$("lang").addEventListener("click", () => { lang = lang === "zh" ? "en" : "zh"; applyLanguage(); });
$("classify").addEventListener("click", classifyBox);
$("csv").addEventListener("change", (e) => e.target.files[0] && loadCsv(e.target.files[0]));
$("csvRun").addEventListener("click", classifyCsv);
$("key").value = sessionStorage.getItem("ernie-cls-key") || "";
$("key").addEventListener("change", () => { sessionStorage.setItem("ernie-cls-key", $("key").value); loadModels(); });
applyLanguage();
loadModels();
