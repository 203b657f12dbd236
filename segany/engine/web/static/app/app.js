// The annotation tool's entry: boots the tool (sign-in, decoder, first image) and maps the
// keyboard and the pointer onto tool.js. See docs/annotation_tool.md.
//
// window.seganyTool = {ready, state(), workingMask(), waitIdle()} is a read-only hook for the
// tests and the benchmark, which drive the tool through real mouse and keyboard events.

import { api, releaseOnExit, track, waitIdle } from "./api.js";
import * as L from "./layers.js";
import { maskArea, maskToRle } from "./rle.js";
import * as R from "./review.js";
import * as T from "./tool.js";
import * as ui from "./ui.js";

const { S, viewport, input } = T;
const params = new URLSearchParams(location.search);
const canvas = viewport.canvas;
const DRAG_PX = 5; // a left press that moves further (CSS px) is a box
let spaceDown = false;

function setTool(tool) {
  S.tool = tool;
  T.refreshUi();
  viewport.requestRender();
}

// ------------------------------------------------------------------ keyboard

/** Enter (with no working mask), Delete and Backspace act on a selected proposal. */
const onProposal = (review, other, idle = false) => () =>
  ((!idle || !S.work) && R.selectedProposal() ? review() : other());

const KEYS = {
  Enter: onProposal(R.acceptSelected, T.accept, true),
  Escape: () => {
    if (!document.getElementById("help").hidden) return ui.toggleHelp(false);
    if (S.tool === "brush" || S.tool === "erase" || S.tool === "hand") {
      if (!S.work?.edit) return setTool("prompt");
    }
    T.discard();
    setTool("prompt");
  },
  Delete: onProposal(R.rejectSelected, T.deleteSelected),
  Backspace: onProposal(R.rejectSelected, T.deleteSelected),
  a: () => R.acceptSelected(),
  x: () => R.rejectSelected(),
  b: () => setTool("brush"),
  e: () => setTool("erase"),
  v: () => setTool("prompt"),
  "[": () => { S.brushRadius = Math.max(1, Math.round(S.brushRadius / 1.25)); T.refreshUi(); },
  "]": () => { S.brushRadius = Math.min(500, Math.ceil(S.brushRadius * 1.25)); T.refreshUi(); },
  m: () => T.editSelected(),
  o: () => {
    S.overlays = !S.overlays;
    T.compositeLayer.alpha = T.proposalLayer.alpha = S.overlays ? 1 : 0;
    viewport.requestRender();
  },
  n: () => T.open(S.index + 1),
  p: () => T.open(S.index - 1),
  d: () => T.markDone(),
  h: () => ui.toggleHelp(),
  "?": () => ui.toggleHelp(),
  "+": () => viewport.zoomCentre(1.25),
  "=": () => viewport.zoomCentre(1.25),
  "-": () => viewport.zoomCentre(0.8),
  0: () => viewport.fit(),
};

document.addEventListener("keydown", (event) => {
  const target = event.target;
  if (target instanceof HTMLInputElement || target instanceof HTMLTextAreaElement) {
    if (event.key === "Enter" || event.key === "Escape") target.blur(); // back to the canvas
    return;
  }
  if (document.getElementById("signin").open) return;
  const key = event.key;
  const ctrl = event.ctrlKey || event.metaKey;
  let run = null;
  if (ctrl && (key === "z" || key === "Z")) run = () => T.undoRedo(event.shiftKey);
  else if (ctrl && (key === "y" || key === "Y")) run = () => T.undoRedo(true);
  else if (ctrl) return;
  else if (key === "Tab" || key === "c" || key === "C") {
    run = () => S.work && T.actions.choose(S.work.selected + (event.shiftKey ? -1 : 1));
  } else if (key === " ") {
    spaceDown = true;
    event.preventDefault();
    return;
  } else {
    run = KEYS[key] ?? KEYS[key.toLowerCase()];
  }
  if (!run) return;
  event.preventDefault();
  track(Promise.resolve().then(run).catch(T.fail)); // in flight (waitIdle) until done
});
document.addEventListener("keyup", (event) => {
  if (event.key === " ") spaceDown = false;
});

// ------------------------------------------------------------------ pointer

function inside([x, y]) {
  return S.image && x >= 0 && y >= 0 && x <= S.image.width && y <= S.image.height;
}

function clampBox([x0, y0, x1, y1]) {
  const W = S.image.width;
  const H = S.image.height;
  const cx = (v) => Math.min(W, Math.max(0, v));
  const cy = (v) => Math.min(H, Math.max(0, v));
  return [cx(Math.min(x0, x1)), cy(Math.min(y0, y1)), cx(Math.max(x0, x1)), cy(Math.max(y0, y1))];
}

canvas.addEventListener("contextmenu", (event) => event.preventDefault());

canvas.addEventListener("pointerdown", (event) => {
  if (!S.image) return;
  canvas.focus();
  canvas.setPointerCapture(event.pointerId);
  const dev = viewport.devicePoint(event);
  const img = viewport.toImage(dev);
  if (event.button === 1 || (event.button === 0 && (spaceDown || S.tool === "hand"))) {
    input.pointer = { kind: "pan", last: dev };
    canvas.classList.add("panning");
    event.preventDefault();
    return;
  }
  if (event.button === 0 && (S.tool === "brush" || S.tool === "erase")) {
    if (S.readOnly) return;
    const stroke = { mode: S.tool === "brush" ? "add" : "erase", radius: S.brushRadius,
                     points: [img] };
    input.pointer = { kind: "stroke", stroke, before: S.work };
    if (!S.work) T.setWork(T.emptyWork(), { record: false });
    const ctx = T.workLayer.canvas.getContext("2d");
    L.drawStroke(ctx, stroke, S.display[1] / S.image.width, L.WORKING_RGB, 0);
    viewport.requestRender();
    return;
  }
  if (event.button === 0 || event.button === 2) {
    input.pointer = { kind: "box", button: event.button, shift: event.shiftKey,
                      alt: event.altKey, start: img,
                      startClient: [event.clientX, event.clientY], now: img, moved: false };
  }
});

canvas.addEventListener("pointermove", (event) => {
  const dev = viewport.devicePoint(event);
  const img = viewport.toImage(dev);
  input.cursor = img;
  const p = input.pointer;
  if (!p) {
    if (S.tool === "brush" || S.tool === "erase") viewport.requestRender();
    return;
  }
  if (p.kind === "pan") {
    viewport.panBy(dev[0] - p.last[0], dev[1] - p.last[1]);
    p.last = dev;
  } else if (p.kind === "stroke") {
    p.stroke.points.push(img);
    const ctx = T.workLayer.canvas.getContext("2d");
    L.drawStroke(ctx, p.stroke, S.display[1] / S.image.width, L.WORKING_RGB,
                 p.stroke.points.length - 1);
    viewport.requestRender();
  } else if (p.kind === "box") {
    const moved = Math.hypot(event.clientX - p.startClient[0], event.clientY - p.startClient[1]);
    if (p.button === 0 && moved > DRAG_PX) p.moved = true;
    p.now = img;
    if (p.moved) viewport.requestRender();
  }
});

function endPress(event) {
  const p = input.pointer;
  input.pointer = null;
  canvas.classList.remove("panning");
  if (!p) return;
  if (p.kind === "stroke") {
    const work = S.work;
    const after = { ...work, strokes: [...work.strokes, p.stroke] };
    T.setWork(after, { record: true, before: p.before });
  } else if (p.kind === "box" && event.type === "pointerup") {
    if (p.moved) {
      const box = clampBox([...p.start, ...viewport.toImage(viewport.devicePoint(event))]);
      if (box[2] - box[0] < 1 || box[3] - box[1] < 1) return;
      T.prompt(() => ({ box }), event.timeStamp);
      viewport.requestRender();
    } else if (inside(p.start)) {
      const hit = p.button === 0 && !p.shift && !p.alt && !S.work ? R.proposalAt(p.start) : null;
      if (hit) return T.actions.select(hit.id, true); // a click on a proposal selects it
      const label = p.button === 2 || p.shift ? 0 : 1;
      T.prompt((base) => ({ points: [...base.points, p.start], labels: [...base.labels, label] }),
               event.timeStamp);
    }
  }
}
canvas.addEventListener("pointerup", endPress);
canvas.addEventListener("pointercancel", endPress);
canvas.addEventListener("pointerleave", () => {
  input.cursor = null;
  viewport.requestRender();
});
canvas.addEventListener("wheel", (event) => {
  event.preventDefault();
  viewport.zoomAt(...viewport.devicePoint(event), Math.exp(-event.deltaY * 0.0015));
}, { passive: false });

// ------------------------------------------------------------------ buttons

for (const b of document.querySelectorAll("#tools button")) {
  b.addEventListener("click", () => setTool(b.dataset.tool));
}
document.getElementById("accept-btn").addEventListener("click", () => track(T.accept()));
document.getElementById("edit-btn").addEventListener("click", () => T.editSelected());
document.getElementById("done-btn").addEventListener("click", () => track(T.markDone()));
document.getElementById("proposal-accept-btn")
  .addEventListener("click", () => track(R.acceptSelected()));
document.getElementById("proposal-reject-btn")
  .addEventListener("click", () => track(R.rejectSelected()));
document.getElementById("proposal-accept-all-btn")
  .addEventListener("click", () => track(R.acceptAll()));
document.getElementById("help-btn").addEventListener("click", () => ui.toggleHelp());
const uploadInput = document.getElementById("upload-input");
uploadInput.addEventListener("change", () => {
  const files = [...uploadInput.files];
  uploadInput.value = "";
  T.uploadFiles(files).catch(T.fail);
});

window.addEventListener("pagehide", () => {
  if (S.image && !S.readOnly) releaseOnExit(S.image.id);
});

// ------------------------------------------------------------------ boot

async function pollStats() {
  try {
    const stats = await api.get("/api/stats");
    S.embeddings = stats.embeddings;
    ui.renderStatus(S);
  } catch {
    // shown by the next action that fails
  }
}

function firstImage() {
  const wanted = Number(params.get("image"));
  const byId = S.images.findIndex((img) => img.id === wanted);
  if (byId >= 0) return byId;
  const free = S.images.findIndex((img) => img.status !== "done" &&
    (!img.lease_holder || img.lease_holder === S.me.annotator));
  return free >= 0 ? free : 0;
}

async function boot() {
  ui.buildHelp();
  S.me = await api.get("/api/me");
  if (S.me.admin) {
    ui.signIn(async (name) => {
      try {
        const r = await api.post("/api/annotators", { name });
        location.assign(r.url);
      } catch (err) {
        const hint = err.status === 422 && /exists/.test(err.detail)
          ? " If that is you, ask the server's owner for your link (segany project annotator)."
          : "";
        throw new Error(`${err.detail || err.message}${hint}`);
      }
    });
  }
  ui.renderStatus(S);
  await T.refreshImages();
  const warmup = params.has("warmup") ? Number(params.get("warmup")) : 150;
  // WASM threads: half the cores, 1 to 4 (?threads=N overrides). The page, the compositor
  // and the server want cores too; on a busy 2-core machine 1 thread decoded faster than 2.
  const cores = navigator.hardwareConcurrency || 1;
  const numThreads = Number(params.get("threads")) || Math.max(1, Math.min(4, Math.floor(cores / 2)));
  await S.decoder.start({ forceServer: params.get("decoder") === "server", warmup, numThreads });
  T.refreshUi();
  if (S.images.length) await T.open(firstImage());
  pollStats();
  setInterval(pollStats, 5000);
  setInterval(() => T.refreshImages(), 15000); // leases and statuses others change
}

const ready = boot().catch((err) => {
  T.fail(err);
  throw err;
});

window.seganyTool = Object.freeze({
  ready,
  waitIdle,
  /** A plain snapshot of what the tool shows. */
  state() {
    const work = S.work;
    const layer = T.workLayer.canvas;
    return {
      imageId: S.image?.id ?? null,
      decoder: S.decoder.mode,
      decoderReason: S.decoder.reason,
      threads: S.decoder.threads,
      annotator: S.me?.annotator ?? null,
      readOnly: S.readOnly,
      leaseHolder: S.leaseHolder,
      scores: work?.result ? [...work.result.scores] : [],
      selected: work?.result ? work.selected : null,
      points: work ? work.points.map((p) => [...p]) : [],
      labels: work ? [...work.labels] : [],
      box: work?.box ?? null,
      strokes: work ? work.strokes.length : 0,
      editing: work?.edit?.id ?? null,
      working: Boolean(work),
      workingArea: work && layer ? maskArea(L.canvasMask(layer)) : 0,
      displaySize: [...S.display],
      accepted: S.accepted.map((m) => ({ id: m.id, version: m.version, area: m.area,
                                         label: m.label, source: m.source,
                                         review: m.review ?? null })),
      proposals: R.pending().map((m) => m.id), // prefilled, waiting for review
      selectedMask: S.selectedId,
      hoverMask: S.hoverId,
      lastClickMs: S.lastClickMs,
      clickTimes: [...S.clickTimes],
      lastTiming: S.lastTiming,
      openMs: S.openMs,
      tool: S.tool,
      overlays: S.overlays,
      brushRadius: S.brushRadius,
      images: S.images.map((i) => ({ id: i.id, status: i.status, num_masks: i.num_masks,
                                     lease_holder: i.lease_holder,
                                     proposals: i.proposals ?? 0 })),
      view: { scale: viewport.scale, tx: viewport.tx, ty: viewport.ty },
      frameTimes: [...viewport.frameTimes],
    };
  },
  /** The working mask's display layer as an uncompressed COCO RLE (null without one). */
  workingMask() {
    const layer = T.workLayer.canvas;
    if (!S.work || !layer) return null;
    return maskToRle(L.canvasMask(layer), layer.height, layer.width);
  },
});
