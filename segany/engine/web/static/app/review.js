// Reviewing prefilled proposals (masks `segany engine prefill` stored with source "prefill",
// listed by the server with review: "proposal" until an annotator decides): select one (in
// the list or by clicking it on the canvas), accept it as it is (POST .../accept), reject it
// (POST .../reject: the store deletes it and keeps it in the event log), edit it (M, then
// Enter: a PATCH, which the store counts as an edited proposal), or accept all the image's
// remaining proposals at once. Each review sends elapsed_ms: the time since the image was
// opened or since the last review. The store records a review once: accept and reject are
// not undone (the help panel says so). See docs/annotation_tool.md and docs/prefill.md.

import { api } from "./api.js";
import * as T from "./tool.js";
import * as ui from "./ui.js";

const { S } = T;

/** The image's proposals waiting for review, in list order. */
export function pending() {
  return S.accepted.filter(T.isPending);
}

/** The selected mask when it is a proposal waiting for review (else null). */
export function selectedProposal() {
  const m = S.accepted.find((x) => x.id === S.selectedId);
  return T.isPending(m) ? m : null;
}

/** The topmost pending proposal under image pixel [x, y] (XY, image px), or null. */
export function proposalAt([x, y]) {
  const px = Math.floor(x);
  const py = Math.floor(y);
  const hits = pending().filter((m) => {
    const c = T.cropOf(m);
    const u = px - c.x;
    const v = py - c.y;
    return u >= 0 && v >= 0 && u < c.w && v < c.h && c.mask[v * c.w + u];
  });
  return hits.length ? hits[hits.length - 1] : null;
}

/** After a review: the next pending proposal is selected (none when all are reviewed). */
function afterReview() {
  const next = pending()[0];
  S.selectedId = next ? next.id : null;
  T.rebuildComposite();
  T.refreshImages();
  T.refreshUi();
}

let reviewing = false; // one review request at a time (a held key does not post twice)

async function once(run) {
  if (reviewing || S.readOnly) return;
  reviewing = true;
  try {
    await run();
  } catch (err) {
    T.fail(err);
    if (err.status === 409 || err.status === 422) await T.loadMasks();
  } finally {
    reviewing = false;
  }
}

/** Accept proposal `m` as it is (the record comes back with version + 1). */
async function acceptOne(m) {
  const rec = await api.post(`/api/masks/${m.id}/accept`,
                             { version: m.version, elapsed_ms: T.reviewElapsed() });
  rec.crop = m.crop;
  S.accepted = S.accepted.map((x) => (x.id === rec.id ? rec : x));
}

/** Accept the selected proposal (A, or Enter with no prompt in progress). */
export function acceptSelected() {
  const m = selectedProposal();
  if (!m) return Promise.resolve();
  return once(async () => {
    await acceptOne(m);
    afterReview();
  });
}

/** Reject (delete) the selected proposal (X, or Delete / Backspace on a proposal). */
export function rejectSelected() {
  const m = selectedProposal();
  if (!m) return Promise.resolve();
  return once(async () => {
    await api.post(`/api/masks/${m.id}/reject`,
                   { version: m.version, elapsed_ms: T.reviewElapsed() });
    S.accepted = S.accepted.filter((x) => x.id !== m.id);
    afterReview();
  });
}

/** Accept every proposal still waiting on this image, after the user confirms. */
export function acceptAll() {
  const todo = pending();
  if (!todo.length || S.readOnly) return Promise.resolve();
  const n = todo.length;
  if (!window.confirm(`Accept all ${n} remaining proposal${n === 1 ? "" : "s"} of this image?`)) {
    return Promise.resolve();
  }
  return once(async () => {
    try {
      for (const m of todo) await acceptOne(m); // one elapsed_ms each: the first carries the wait
    } finally {
      afterReview();
    }
    ui.toast(`${n} proposal${n === 1 ? "" : "s"} accepted`, "info", 3000);
  });
}
