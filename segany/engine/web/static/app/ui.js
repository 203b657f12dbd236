// The tool's DOM: image list, mask list, candidate chips, status bar, toasts, banner, help.
// Pure rendering from the state object app.js owns; user actions call back into `actions`.

import { colorFor } from "./layers.js";

const $ = (id) => document.getElementById(id);

/** Every shortcut, for the help panel (and docs/annotation_tool.md). */
export const SHORTCUTS = [
  ["Left click", "foreground point"],
  ["Right click / Shift+click", "background point"],
  ["Left drag", "box (one per mask; a new drag replaces it)"],
  ["Tab / C", "cycle the three candidate masks"],
  ["Enter", "accept the working mask (saved at once)"],
  ["Escape", "discard the working mask (or leave the brush/eraser)"],
  ["Ctrl+Z", "undo (points, box, strokes, candidate, accept, delete; not proposal reviews)"],
  ["Ctrl+Shift+Z / Ctrl+Y", "redo"],
  ["B / E / V", "brush / eraser / prompt tool"],
  ["[ / ]", "brush radius smaller / larger"],
  ["M", "edit the selected mask or proposal (brush/eraser, Enter saves)"],
  ["Click a proposal", "select it (with no working mask; Alt+click puts a point there)"],
  ["A", "accept the selected proposal (Enter too, with no working mask)"],
  ["X", "reject the selected proposal (Delete / Backspace too)"],
  ["O", "show / hide the accepted masks"],
  ["Delete / Backspace", "delete the selected mask"],
  ["N / P", "next / previous image"],
  ["D", "mark the image done, go to the next"],
  ["Wheel / + / -", "zoom about the cursor / in / out"],
  ["0", "fit the image"],
  ["Space+drag, middle drag", "pan"],
  ["? / H", "this help"],
];

export function toast(message, kind = "error", ms = 6000) {
  const el = document.createElement("div");
  el.className = `toast ${kind}`;
  el.textContent = message;
  $("toasts").appendChild(el);
  setTimeout(() => el.remove(), ms);
  return el;
}

export function buildHelp() {
  const table = $("help-table");
  for (const [key, what] of SHORTCUTS) {
    const tr = document.createElement("tr");
    const k = document.createElement("td");
    key.split(" / ").forEach((part, i) => {
      if (i) k.append(" / ");
      const kbd = document.createElement("kbd");
      kbd.textContent = part;
      k.append(kbd);
    });
    const w = document.createElement("td");
    w.textContent = what;
    tr.append(k, w);
    table.append(tr);
  }
}

export function toggleHelp(force) {
  const el = $("help");
  el.hidden = force === undefined ? !el.hidden : !force;
}

export function renderImages(S, actions) {
  const list = $("image-list");
  list.replaceChildren();
  $("no-images").hidden = S.images.length > 0;
  S.images.forEach((img, i) => {
    const li = document.createElement("li");
    li.dataset.id = img.id;
    if (i === S.index) li.classList.add("current");
    const takenBy = img.lease_holder && img.lease_holder !== S.me?.annotator ? img.lease_holder : null;
    if (takenBy) li.classList.add("taken");
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = img.file_name;
    name.title = img.file_name;
    const meta = document.createElement("span");
    meta.className = "meta";
    const status = document.createElement("span");
    status.className = `status-${img.status}`;
    status.textContent = img.status.replace("_", " ");
    meta.append(status, ` · ${img.num_masks} mask${img.num_masks === 1 ? "" : "s"}`);
    if (img.proposals) { // prefilled proposals waiting for review
      li.classList.add("has-proposals");
      const p = document.createElement("span");
      p.className = "proposals";
      p.textContent = ` · ${img.proposals} to review`;
      meta.append(p);
    }
    if (takenBy) {
      const t = document.createElement("span");
      t.className = "taken-by";
      t.textContent = ` · taken by ${takenBy}`;
      meta.append(t);
    }
    li.append(name, meta);
    li.addEventListener("click", () => actions.open(i));
    list.append(li);
  });
}

/**
 * A mask-list row: swatch (filled, or only its border for a proposal), #id, the `middle`
 * elements (e.g. the label input), an info line; hover highlights, a click selects (unless
 * it lands on `ignoreClick`).
 */
function maskRow(S, actions, m, { outlineOnly = false, middle = [], info, ignoreClick = null }) {
  const li = document.createElement("li");
  li.dataset.id = m.id;
  if (m.id === S.selectedId) li.classList.add("selected");
  const sw = document.createElement("span");
  sw.className = "swatch";
  const [r, g, b] = colorFor(m.id);
  if (outlineOnly) sw.style.borderColor = `rgb(${r},${g},${b})`;
  else sw.style.background = `rgb(${r},${g},${b})`;
  const id = document.createElement("span");
  id.textContent = `#${m.id}`;
  const text = document.createElement("span");
  text.className = "info";
  text.textContent = info;
  li.append(sw, id, ...middle, text);
  li.addEventListener("mouseenter", () => actions.hover(m.id));
  li.addEventListener("mouseleave", () => actions.hover(null));
  li.addEventListener("click", (e) => {
    if (ignoreClick === null || e.target !== ignoreClick) actions.select(m.id);
  });
  return li;
}

/** The image's proposals waiting for review: a list with source and score (no label). */
function renderProposals(S, actions, proposals) {
  const list = $("proposal-list");
  list.replaceChildren();
  $("proposals-section").hidden = !proposals.length;
  $("proposal-count").textContent = proposals.length ? `(${proposals.length})` : "";
  for (const m of proposals) {
    const score = m.predicted_iou == null ? "" : ` · score ${m.predicted_iou.toFixed(2)}`;
    list.append(maskRow(S, actions, m, { outlineOnly: true, info: `${m.source}${score} · ${m.area}px` }));
  }
}

export function renderMasks(S, actions) {
  const list = $("mask-list");
  list.replaceChildren();
  const kept = S.accepted.filter((m) => m.review !== "proposal");
  renderProposals(S, actions, S.accepted.filter((m) => m.review === "proposal"));
  $("mask-count").textContent = kept.length ? `(${kept.length})` : "";
  for (const m of kept) {
    const label = document.createElement("input");
    label.value = m.label ?? "";
    label.placeholder = "label";
    label.disabled = S.readOnly;
    label.addEventListener("focus", () => actions.select(m.id, true));
    label.addEventListener("keydown", (e) => {
      e.stopPropagation();
      if (e.key === "Enter") label.blur();
    });
    label.addEventListener("change", () => actions.relabel(m.id, label.value));
    const score = m.predicted_iou == null ? "" : ` · ${m.predicted_iou.toFixed(2)}`;
    const review = m.review ? ` · ${m.review}` : ""; // a reviewed proposal: accepted or edited
    const info = `${m.source}${score}${review} · ${m.area}px`;
    list.append(maskRow(S, actions, m, { middle: [label], info, ignoreClick: label }));
  }
}

export function renderChips(S, actions) {
  const el = $("chips");
  el.replaceChildren();
  const result = S.work?.result;
  if (!result || result.scores.length < 2) return;
  result.scores.forEach((s, k) => {
    const chip = document.createElement("span");
    chip.className = "chip" + (k === S.work.selected ? " selected" : "");
    chip.textContent = `${k + 1}: ${s.toFixed(3)}`;
    chip.title = "candidate mask (Tab / C cycles)";
    chip.addEventListener("click", () => actions.choose(k));
    el.append(chip);
  });
}

export function renderStatus(S) {
  const badge = $("decoder-badge");
  const d = S.decoder;
  badge.className = `badge ${d.mode}`;
  if (d.mode === "browser") badge.textContent = `decoder: browser (WASM, ${d.threads} thread${d.threads === 1 ? "" : "s"})`;
  else if (d.mode === "server") badge.textContent = `decoder: server (${d.reason})`;
  else badge.textContent = "decoder: starting";
  $("click-ms").textContent = S.lastClickMs == null ? "— ms" : `${S.lastClickMs.toFixed(1)} ms`;
  const tools = { prompt: "prompt", brush: "brush", erase: "eraser", hand: "hand" };
  let mode = S.work?.edit ? `editing #${S.work.edit.id}` : (S.work ? "working mask" : "no mask");
  if (S.readOnly) mode = "read-only";
  if (S.image && !S.embeddingReady) mode += " · loading the embedding";
  $("tool-status").textContent = `tool: ${tools[S.tool]} · ${mode}`;
  $("brush-status").textContent = `brush: ${S.brushRadius}px`;
  for (const b of document.querySelectorAll("#tools button")) {
    b.classList.toggle("active", b.dataset.tool === S.tool);
  }
  $("accept-btn").disabled = !S.work || S.readOnly;
  $("edit-btn").disabled = S.selectedId == null || S.readOnly;
  const proposal = S.accepted.find((m) => m.id === S.selectedId)?.review === "proposal";
  $("proposal-accept-btn").disabled = !proposal || S.readOnly;
  $("proposal-reject-btn").disabled = !proposal || S.readOnly;
  $("proposal-accept-all-btn").disabled = S.readOnly ||
    !S.accepted.some((m) => m.review === "proposal");
  $("done-btn").disabled = S.readOnly || S.index < 0;
  const e = S.embeddings;
  $("embed-progress").textContent = e ? `embeddings: ${e.encoded} encoded, ${e.queued} queued` : "";
  const canvas = $("view");
  canvas.classList.toggle("hand", S.tool === "hand");
  canvas.classList.toggle("brush", S.tool === "brush" || S.tool === "erase");
  const who = S.me ? (S.me.annotator ?? "server owner (view only)") : "";
  $("who").textContent = who;
}

export function setBanner(text) {
  const el = $("banner");
  el.hidden = !text;
  el.textContent = text || "";
}

export function setTitle(text) {
  $("image-title").textContent = text;
}

/** The owner's sign-in dialog: resolves when dismissed (`submit(name)` may throw a message). */
export function signIn(submit) {
  const dialog = $("signin");
  const form = $("signin-form");
  const error = $("signin-error");
  form.addEventListener("submit", async (event) => {
    if (event.submitter?.value !== "ok") return;
    event.preventDefault();
    error.textContent = "";
    try {
      await submit($("signin-name").value.trim());
    } catch (err) {
      error.textContent = err.message;
    }
  });
  dialog.showModal();
}
