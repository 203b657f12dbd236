// The annotation tool's core: state, image opening and leases, prompts, the working mask,
// accept, undo/redo. app.js wires input and boots it. See docs/annotation_tool.md.

import { api, postEvent, track } from "./api.js";
import { Decoders } from "./decode.js";
import * as L from "./layers.js";
import { cropToMask, maskArea, maskToRle, rleToCrop } from "./rle.js";
import * as ui from "./ui.js";
import { Viewport } from "./view.js";
import { History } from "./history.js";

const LEASE_TTL_S = 300;
const LEASE_RENEW_MS = 60000;

const S = {
  me: null,
  images: [],
  index: -1,
  image: null, // the open image's record
  readOnly: true,
  leaseHolder: null,
  accepted: [], // mask records (+ .crop: the mask in its box, decoded once)
  selectedId: null,
  hoverId: null,
  work: null, // {points, labels, box, result, selected, strokes, startedAt, edit}
  tool: "prompt",
  overlays: true, // the accepted masks shown (O toggles)
  brushRadius: 8,
  lastClickMs: null,
  clickTimes: [],
  lastTiming: null, // the last click's parts (ms): wait, decode, layer, draw
  openMs: null, // opening the last image: record, lease, embedding, bitmap, masks
  embeddings: null,
  decoder: new Decoders(),
  display: [1, 1], // [h, w] of the working layer
};

const viewport = new Viewport(document.getElementById("view"));
const workLayer = { canvas: null, alpha: 0.55 };
const compositeLayer = { canvas: null, alpha: 1 };
const proposalLayer = { canvas: null, alpha: 1 }; // prefilled masks waiting for review
const highlightLayer = { canvas: null, alpha: 1 };
viewport.layers = [compositeLayer, proposalLayer, highlightLayer, workLayer];
const history = new History();
let chain = Promise.resolve(); // prompts are decoded one after another
let leaseTimer = null;
/** The press in progress ({kind: "box" | "pan" | "stroke", ...}) and the mouse (image px). */
export const input = { pointer: null, cursor: null };

// ------------------------------------------------------------------ helpers

function fail(err) {
  console.error(err);
  ui.toast(err.detail || err.message || String(err));
}

function refreshUi() {
  ui.renderStatus(S);
  ui.renderChips(S, actions);
}

function emptyWork() {
  return { points: [], labels: [], box: null, result: null, selected: 0, strokes: [],
           startedAt: Date.now(), edit: null };
}

/** Whether a mask record is a prefilled proposal waiting for review. */
const isPending = (m) => m?.review === "proposal";

/** Milliseconds since the image was opened or the last proposal was reviewed (and restart). */
function reviewElapsed() {
  const now = Date.now();
  const ms = now - (S.reviewStart ?? now);
  S.reviewStart = now;
  return ms;
}

/** A mask record's pixels, decoded once into its bounding box. */
function cropOf(record) {
  if (!record.crop) record.crop = rleToCrop(record.segmentation);
  return record.crop;
}

// ------------------------------------------------------------------ layers

function rebuildWorking() {
  const [h, w] = S.display;
  if (!workLayer.canvas || workLayer.canvas.width !== w || workLayer.canvas.height !== h) {
    workLayer.canvas = new OffscreenCanvas(w, h);
  }
  const work = S.work;
  if (work?.result) {
    S.decoder.paintDisplay(workLayer.canvas, work.result, work.selected, S.image, L.WORKING_RGB);
  } else {
    const base = work?.edit
      ? L.resampleMask(work.edit.base, S.image.height, S.image.width, h, w) : null;
    L.paintMask(workLayer.canvas, base, L.WORKING_RGB);
  }
  if (work) L.drawStrokes(workLayer.canvas, work.strokes, w / S.image.width, L.WORKING_RGB);
  refreshUi();
}

function rebuildComposite() {
  if (!S.image) return;
  const { height: H, width: W } = S.image;
  const editing = S.work?.edit?.id;
  const shown = S.accepted.filter((m) => m.id !== editing);
  const entries = (pending) => shown.filter((m) => isPending(m) === pending)
    .map((m) => ({ crop: cropOf(m), rgb: L.colorFor(m.id) }));
  compositeLayer.canvas = L.buildComposite(entries(false), H, W);
  proposalLayer.canvas = L.buildProposals(entries(true), H, W);
  rebuildHighlight();
  ui.renderMasks(S, actions);
}

function rebuildHighlight() {
  const id = S.hoverId ?? S.selectedId;
  const m = S.accepted.find((x) => x.id === id);
  const shown = m && m.id !== S.work?.edit?.id
    ? L.buildHighlight(cropOf(m), [255, 255, 255]) : { canvas: null, rect: null };
  highlightLayer.canvas = shown.canvas;
  highlightLayer.rect = shown.rect;
  viewport.requestRender();
}

viewport.overlay = (ctx, vp) => {
  const work = S.work;
  const r = Math.max(3, 4 * (window.devicePixelRatio || 1));
  if (work) {
    work.points.forEach(([x, y], i) => {
      const [sx, sy] = vp.toScreen([x, y]);
      ctx.beginPath();
      ctx.arc(sx, sy, r, 0, 2 * Math.PI);
      ctx.fillStyle = work.labels[i] === 1 ? "#22c55e" : "#ef4444";
      ctx.fill();
      ctx.lineWidth = 1.5;
      ctx.strokeStyle = "#fff";
      ctx.stroke();
    });
    if (work.box) drawBox(ctx, vp, work.box, "#ffd700");
  }
  const { pointer, cursor } = input;
  if (pointer?.kind === "box" && pointer.moved) {
    drawBox(ctx, vp, [...pointer.start, ...pointer.now], "#ffffff");
  }
  if (cursor && (S.tool === "brush" || S.tool === "erase")) {
    const [sx, sy] = vp.toScreen(cursor);
    ctx.beginPath();
    ctx.arc(sx, sy, S.brushRadius * vp.scale, 0, 2 * Math.PI);
    ctx.strokeStyle = S.tool === "brush" ? "#ffd700" : "#ef4444";
    ctx.lineWidth = 1.5;
    ctx.stroke();
  }
};

function drawBox(ctx, vp, [x0, y0, x1, y1], color) {
  const [a, b] = vp.toScreen([Math.min(x0, x1), Math.min(y0, y1)]);
  const [c, d] = vp.toScreen([Math.max(x0, x1), Math.max(y0, y1)]);
  ctx.strokeStyle = color;
  ctx.lineWidth = 2;
  ctx.setLineDash([6, 4]);
  ctx.strokeRect(a, b, c - a, d - b);
  ctx.setLineDash([]);
}

// ------------------------------------------------------------------ working mask

/** Make `next` the working mask (recorded for undo unless `record` is false). */
function setWork(next, { record = true, before = S.work } = {}) {
  S.work = next;
  if (record) history.push({ kind: "work", before, after: next });
  rebuildWorking();
  viewport.requestRender();
}

/** Add a prompt (a point or a box) and decode it; `t0` is the input event's time stamp. */
function prompt(change, t0) {
  if (S.readOnly || !S.image || S.work?.edit) {
    if (S.work?.edit) ui.toast("editing a mask: use the brush and eraser (Enter saves)", "info");
    return;
  }
  const image = S.image;
  const run = async () => {
    const before = S.work;
    const base = before && !before.edit ? before : emptyWork();
    const next = { ...base, ...change(base) };
    if (!next.points.length && !next.box) return;
    const previous = base.result ? { result: base.result, selected: base.selected } : null;
    const tStart = performance.now();
    const result = await S.decoder.decode(image, next, previous);
    if (S.image !== image) return;
    let best = 0;
    result.scores.forEach((s, k) => { if (s > result.scores[best]) best = k; });
    next.result = result;
    next.selected = best;
    if (S.decoder.mode === "browser") {
      // the server's predict records its own prompt event
      postEvent("prompt", { image_id: image.id,
                            payload: { points: next.points, labels: next.labels, box: next.box } });
    }
    S.work = next;
    history.push({ kind: "work", before, after: next });
    const t1 = performance.now();
    rebuildWorking();
    const t2 = performance.now();
    viewport.render(); // drawn now, not at the next frame
    const t3 = performance.now();
    S.lastClickMs = t3 - t0;
    S.clickTimes.push(S.lastClickMs);
    S.lastTiming = { clickMs: t3 - t0, decodeMs: t1 - tStart, waitMs: tStart - t0,
                     workerMs: result.raw?.decodeMs ?? null, layerMs: t2 - t1, drawMs: t3 - t2 };
    ui.renderStatus(S);
  };
  chain = track(chain.then(run).catch(fail));
}

function choose(k) {
  const work = S.work;
  if (!work?.result || k === work.selected) return;
  setWork({ ...work, selected: ((k % work.result.scores.length) + work.result.scores.length)
    % work.result.scores.length });
}

function discard() {
  if (!S.work) return;
  if (!S.work.edit) postEvent("discard", { image_id: S.image.id });
  setWork(null);
  rebuildComposite();
}

let accepting = false; // one accept at a time: a second Enter does not post twice

async function accept() {
  if (accepting) return;
  accepting = true;
  try {
    await acceptWork();
  } finally {
    accepting = false;
  }
}

async function acceptWork() {
  await chain; // the last prompt's result first
  const work = S.work;
  if (!work || S.readOnly) return;
  const image = S.image;
  const { height: H, width: W } = image;
  try {
    let base = null;
    if (work.result) base = await S.decoder.exactMask(work.result, work.selected, image);
    else if (work.edit) base = work.edit.base;
    const full = L.fullMask(base, work.strokes, H, W);
    if (!maskArea(full)) {
      ui.toast("the mask is empty: nothing to accept");
      return;
    }
    const segmentation = maskToRle(full, H, W);
    if (work.edit) {
      const old = S.accepted.find((m) => m.id === work.edit.id);
      const rec = await api.patch(`/api/masks/${work.edit.id}`, {
        version: work.edit.version, segmentation, // the source (manual, prefill, auto) stays
        elapsed_ms: isPending(old) ? reviewElapsed() : Date.now() - work.startedAt,
      });
      if (old?.review) rec.review = "edited"; // a PATCHed proposal counts as reviewed, edited
      history.push({ kind: "edit", work, before: old, after: rec });
      replaceMask(rec);
    } else {
      const body = {
        segmentation,
        predicted_iou: work.result ? work.result.scores[work.selected] : null,
        point_coords: work.points,
        prompts: { points: work.points, labels: work.labels, box: work.box,
                   candidate: work.selected, strokes: work.strokes.length,
                   decoder: work.result?.kind ?? null },
        source: "manual",
        elapsed_ms: Date.now() - work.startedAt,
      };
      const label = document.getElementById("next-label").value.trim();
      if (label) body.label = label;
      const rec = await api.post(`/api/images/${image.id}/masks`, body);
      history.push({ kind: "accept", work, body, record: rec });
      S.accepted.push(rec);
    }
    S.work = null;
    rebuildWorking();
    rebuildComposite();
    refreshImages();
  } catch (err) {
    fail(err); // the working mask stays, with the message
    if (err.status === 409) await loadMasks();
  }
}

function replaceMask(rec) {
  S.accepted = S.accepted.map((m) => (m.id === rec.id ? rec : m));
}

async function deleteSelected() {
  const m = S.accepted.find((x) => x.id === S.selectedId);
  if (!m || S.readOnly) return;
  try {
    await api.del(`/api/masks/${m.id}?version=${m.version}`);
    history.push({ kind: "delete", record: m });
    S.accepted = S.accepted.filter((x) => x.id !== m.id);
    S.selectedId = null;
    rebuildComposite();
    refreshImages();
  } catch (err) {
    fail(err);
    if (err.status === 409) await loadMasks();
  }
}

function editSelected() {
  const m = S.accepted.find((x) => x.id === S.selectedId);
  if (!m || S.readOnly) return;
  setWork({ ...emptyWork(), edit: { id: m.id, version: m.version,
                                            base: cropToMask(cropOf(m), S.image.height, S.image.width) } });
  if (S.tool === "prompt") S.tool = "brush";
  rebuildComposite();
  refreshUi();
}

async function relabel(id, label) {
  const m = S.accepted.find((x) => x.id === id);
  if (!m) return;
  try {
    const rec = await api.patch(`/api/masks/${id}`, { version: m.version, label: label || null });
    rec.crop = m.crop;
    replaceMask(rec);
  } catch (err) {
    fail(err);
    if (err.status === 409) await loadMasks();
  }
}

/** Re-POST a deleted or un-accepted mask's fields (a new id). */
function repost(record) {
  const body = {};
  for (const k of ["segmentation", "predicted_iou", "stability_score", "point_coords", "prompts",
                   "source", "label"]) {
    if (record[k] !== undefined && record[k] !== null) body[k] = record[k];
  }
  return api.post(`/api/images/${S.image.id}/masks`, body);
}

async function undoRedo(redo) {
  await chain;
  const entry = redo ? history.redoEntry() : history.undoEntry();
  if (!entry || S.readOnly) return;
  const kind = redo ? "redo" : "undo";
  try {
    if (entry.kind === "work") {
      S.work = redo ? entry.after : entry.before;
      rebuildWorking();
    } else if (entry.kind === "accept") {
      if (redo) {
        entry.record = await api.post(`/api/images/${S.image.id}/masks`, entry.body);
        S.accepted.push(entry.record);
        S.work = null;
      } else {
        await api.del(`/api/masks/${entry.record.id}?version=${entry.record.version}`);
        S.accepted = S.accepted.filter((m) => m.id !== entry.record.id);
        S.work = entry.work;
      }
      rebuildWorking();
    } else if (entry.kind === "delete") {
      if (redo) {
        await api.del(`/api/masks/${entry.record.id}?version=${entry.record.version}`);
        S.accepted = S.accepted.filter((m) => m.id !== entry.record.id);
      } else {
        entry.record = await repost(entry.record);
        S.accepted.push(entry.record);
      }
    } else if (entry.kind === "edit") {
      const target = redo ? entry.after : entry.before;
      const current = S.accepted.find((m) => m.id === target.id);
      const rec = await api.patch(`/api/masks/${target.id}`, {
        version: current.version, segmentation: target.segmentation });
      rec.review = current.review; // a reviewed proposal stays reviewed
      replaceMask(rec);
      S.work = redo ? null : { ...entry.work, edit: { ...entry.work.edit, version: rec.version } };
      rebuildWorking();
    }
    history.commit(redo);
    postEvent(kind, { image_id: S.image.id, payload: { what: entry.kind } });
    rebuildComposite();
    refreshImages();
    viewport.requestRender();
  } catch (err) {
    fail(err);
    if (err.status === 409) await loadMasks();
  }
}

// ------------------------------------------------------------------ images and leases

async function refreshImages() {
  try {
    S.images = await api.get("/api/images");
    ui.renderImages(S, actions);
  } catch (err) {
    fail(err);
  }
}

async function loadMasks() {
  const image = S.image;
  const masks = await api.get(`/api/images/${image.id}/masks`);
  if (S.image !== image) return;
  S.accepted = masks;
  if (!masks.some((m) => m.id === S.selectedId)) S.selectedId = null;
  rebuildComposite();
}

async function leave() {
  clearInterval(leaseTimer);
  leaseTimer = null;
  const image = S.image;
  if (image && !S.readOnly) {
    await api.del(`/api/images/${image.id}/lease`).catch(fail);
  }
}

async function takeLease(image) {
  if (!S.me?.annotator) {
    return { readOnly: true, banner: "Signed in as the server's owner: view only. " +
             "Choose an annotator name to annotate." };
  }
  try {
    await api.post(`/api/images/${image.id}/lease`, { ttl_s: LEASE_TTL_S });
    return { readOnly: false, banner: "" };
  } catch (err) {
    if (err.status !== 409) throw err;
    let holder = null;
    try {
      holder = (await api.get(`/api/images/${image.id}`)).lease_holder;
    } catch {
      // keep the message
    }
    S.leaseHolder = holder;
    return { readOnly: true,
             banner: `Taken by ${holder ?? "another annotator"}: read-only (${err.detail})` };
  }
}

let bitmapAhead = null; // {id, bitmap: Promise<ImageBitmap | null>}

function loadBitmap(imageId) {
  return track((async () => {
    const response = await api.raw(`/api/images/${imageId}/file`);
    return createImageBitmap(await response.blob());
  })());
}

/** The prefetched bitmap of image `id` (null when none was fetched or it failed). */
function takeAhead(id) {
  const ahead = bitmapAhead;
  bitmapAhead = null;
  if (!ahead || ahead.id !== id) return null;
  return ahead.bitmap.then((b) => b ?? loadBitmap(id));
}

let openSeq = 0; // the latest open(); an older one that is overtaken gives up its lease

async function open(index) {
  if (index < 0 || index >= S.images.length) return;
  await chain;
  const seq = ++openSeq;
  const leaving = leave(); // the old lease goes while the new image loads
  history.clear();
  S.index = index;
  S.work = null;
  S.accepted = [];
  S.selectedId = S.hoverId = null;
  S.leaseHolder = null;
  S.lastClickMs = null;
  S.readOnly = true;
  const tOpen = performance.now();
  const listed = S.images[index];
  S.display = L.layerSize(listed.height, listed.width, L.MAX_DISPLAY);
  S.image = listed;
  S.embeddingReady = false;
  const embedding = S.decoder.setImage(listed).then(() => {
    S.embeddingReady = true;
  }, (err) => {
    S.embeddingReady = true; // the server decodes from now on
    S.decoder.useServer(`WASM unavailable: the embedding failed (${err.message})`);
    ui.toast(`the browser decoder failed; using the server: ${err.message}`);
    refreshUi();
  });
  // the record (its GET also has the server encode the next images), the lease, the file and
  // the masks, all at once
  const [image, lease, bitmap, masks] = await Promise.all([
    api.get(`/api/images/${listed.id}`),
    takeLease(listed),
    takeAhead(listed.id) ?? loadBitmap(listed.id),
    api.get(`/api/images/${listed.id}/masks`),
  ]);
  await leaving;
  if (seq !== openSeq) {
    if (!lease.readOnly) api.del(`/api/images/${listed.id}/lease`).catch(fail);
    return;
  }
  S.image = image;
  S.readOnly = lease.readOnly;
  ui.setTitle(`${image.file_name} (${image.width}×${image.height})`);
  ui.setBanner(lease.banner);
  if (!S.readOnly) {
    leaseTimer = setInterval(() => {
      api.post(`/api/images/${image.id}/lease`, { ttl_s: LEASE_TTL_S }).catch((err) => {
        fail(err);
        if (err.status === 409 && S.image === image) { // lost (expired and taken): read-only
          S.readOnly = true;
          ui.setBanner(`Lease lost: read-only (${err.detail})`);
          refreshUi();
        }
      });
    }, LEASE_RENEW_MS);
  }
  viewport.setImage(bitmap, image.width, image.height);
  S.accepted = masks;
  S.reviewStart = Date.now();
  rebuildWorking();
  rebuildComposite();
  await embedding;
  S.openMs = performance.now() - tOpen;
  const next = S.images[index + 1];
  if (next) { // the next image's file and embedding, ahead of N
    S.decoder.prefetch(next);
    bitmapAhead = { id: next.id, bitmap: loadBitmap(next.id).catch(() => null) };
  }
  if (!S.readOnly) postEvent("open", { image_id: image.id });
  await refreshImages();
  refreshUi();
}

/** Upload image files; each failure (not an image, too large) is shown with its reason. */
async function uploadFiles(files) {
  let added = 0;
  for (const file of files) {
    try {
      await api.upload("/api/images", file);
      added += 1;
    } catch (err) {
      fail(err);
    }
  }
  await refreshImages();
  if (added) ui.toast(`${added} image${added === 1 ? "" : "s"} added`, "info", 3000);
  if (!S.image && S.images.length) await open(0);
}

async function markDone() {
  if (S.readOnly || !S.image) return;
  try {
    await api.post(`/api/images/${S.image.id}/status`, { status: "done" });
    await refreshImages();
    await open(Math.min(S.index + 1, S.images.length - 1));
  } catch (err) {
    fail(err);
  }
}

const actions = {
  open: (i) => track(open(i)).catch(fail),
  choose,
  hover(id) {
    S.hoverId = id;
    for (const li of document.querySelectorAll("#mask-list li, #proposal-list li")) {
      li.classList.toggle("hover", Number(li.dataset.id) === id);
    }
    rebuildHighlight();
  },
  /** Select a mask (a second click deselects it, unless `keep`). */
  select(id, keep = false) {
    if (S.selectedId === id && keep) return;
    S.selectedId = S.selectedId === id ? null : id;
    rebuildHighlight();
    for (const li of document.querySelectorAll("#mask-list li, #proposal-list li")) {
      li.classList.toggle("selected", Number(li.dataset.id) === S.selectedId);
    }
    refreshUi();
  },
  relabel,
};

export {
  S, accept, actions, compositeLayer, cropOf, deleteSelected, discard, editSelected, emptyWork, fail,
  isPending, leave, loadMasks, markDone, open, prompt, proposalLayer, rebuildComposite,
  refreshImages, refreshUi, reviewElapsed, setWork, undoRedo, uploadFiles, viewport, workLayer,
};
