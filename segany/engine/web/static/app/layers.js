// Image-resolution mask layers: the working mask from the decoder's low-res logits (bilinear,
// threshold 0, at most MAX_DISPLAY px long side), brush/eraser strokes kept as geometry, the
// exact full-size mask at accept, and the composite of the accepted masks. Layers are
// OffscreenCanvases in image coordinates scaled by their own factor; the viewport draws them
// with its transform and never re-rasterizes a mask per frame.

/** The working mask's display layer has at most this long side (px). */
export const MAX_DISPLAY = 1024;
/** The accepted masks' composite has at most this long side (px). */
export const MAX_COMPOSITE = 4096;

const PALETTE = [
  [230, 25, 75], [60, 180, 75], [0, 130, 200], [245, 130, 48], [145, 30, 180],
  [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212], [0, 128, 128],
  [220, 190, 255], [170, 110, 40], [128, 0, 0], [170, 255, 195], [128, 128, 0], [0, 0, 128],
];
/** The working mask's colour (distinct from the palette). */
export const WORKING_RGB = [255, 215, 0];

/** A stable colour per mask id. */
export function colorFor(id) {
  return PALETTE[((id % PALETTE.length) + PALETTE.length) % PALETTE.length];
}

/** [h, w] of a layer for an H x W image whose long side is at most `maxSide`. */
export function layerSize(H, W, maxSide) {
  const s = Math.min(1, maxSide / Math.max(H, W));
  return [Math.max(1, Math.round(H * s)), Math.max(1, Math.round(W * s))];
}

/**
 * Candidate `k` of a decode result as a mask of an h x w layer over the image: the valid block
 * of the low-res logits bilinearly resampled (half-pixel centres, as SAM's upscale composes)
 * and thresholded at 0. Writes `value` into `out` (h * w, zeros outside the mask: a new
 * Uint8Array of 0/1 by default; a layer's Uint32 pixels to paint it at once) and returns it.
 */
export function lowResToMask(result, k, h, w, out = new Uint8Array(h * w), value = 1) {
  const [L0, L1] = result.lowResSize;
  const [vh, vw] = result.lowResValid;
  const data = result.lowRes;
  const off = k * L0 * L1;
  const x0 = new Int32Array(w);
  const x1 = new Int32Array(w);
  const fx = new Float32Array(w);
  for (let j = 0; j < w; j++) {
    let u = (j + 0.5) * (vw / w) - 0.5;
    if (u < 0) u = 0;
    const a = Math.min(Math.floor(u), L1 - 1);
    x0[j] = a;
    x1[j] = Math.min(a + 1, L1 - 1);
    fx[j] = u - a;
  }
  // Per output row: the two low-res rows interpolated once (span values); then per low-res
  // interval [c, c + 1] of that row, the output pixels it covers are all out (both ends <= 0),
  // all in (both > 0, filled at once) or interpolated one by one (the mask's edge only).
  const span = Math.min(L1, Math.ceil(vw) + 1);
  const col = new Float32Array(span);
  const start = new Int32Array(span + 1); // output columns whose x0 is c: [start[c], start[c+1])
  for (let j = 0, c = 0; c <= span; c++) {
    while (j < w && x0[j] < c) j++;
    start[c] = j;
  }
  const mask = out;
  let lastB = -1;
  let lastFy = -1;
  for (let i = 0; i < h; i++) {
    let v = (i + 0.5) * (vh / h) - 0.5;
    if (v < 0) v = 0;
    const b = Math.min(Math.floor(v), L0 - 1);
    const fy = v - b;
    if (b !== lastB || fy !== lastFy) {
      const r0 = off + b * L1;
      const r1 = off + Math.min(b + 1, L0 - 1) * L1;
      for (let c = 0; c < span; c++) col[c] = data[r0 + c] + (data[r1 + c] - data[r0 + c]) * fy;
      lastB = b;
      lastFy = fy;
    }
    const row = i * w;
    for (let c = 0; c < span; c++) {
      const j0 = start[c];
      const j1 = start[c + 1];
      if (j0 === j1) continue;
      const a0 = col[c];
      const a1 = col[Math.min(c + 1, span - 1)];
      if (a0 <= 0 && a1 <= 0) continue;
      if (a0 > 0 && a1 > 0) {
        mask.fill(value, row + j0, row + j1);
        continue;
      }
      for (let j = j0; j < j1; j++) {
        if (col[x0[j]] + (col[x1[j]] - col[x0[j]]) * fx[j] > 0) mask[row + j] = value;
      }
    }
  }
  return mask;
}

/** Candidate `k` of full-size logits (M x H x W) as a Uint8Array(H * W) mask (> 0). */
export function logitsToMask(logits, k, H, W) {
  const n = H * W;
  const mask = new Uint8Array(n);
  const off = k * n;
  for (let i = 0; i < n; i++) if (logits[off + i] > 0) mask[i] = 1;
  return mask;
}

/** Nearest-neighbour resample of an H x W mask to h x w. */
export function resampleMask(mask, H, W, h, w) {
  if (H === h && W === w) return mask;
  const out = new Uint8Array(h * w);
  const cols = new Int32Array(w);
  for (let j = 0; j < w; j++) cols[j] = Math.min(W - 1, Math.floor(((j + 0.5) * W) / w));
  for (let i = 0; i < h; i++) {
    const src = Math.min(H - 1, Math.floor(((i + 0.5) * H) / h)) * W;
    const row = i * w;
    for (let j = 0; j < w; j++) out[row + j] = mask[src + cols[j]];
  }
  return out;
}

// One cleared pixel buffer per layer canvas, reused by every repaint of that canvas.
const pixelBuffers = new WeakMap();

function clearedPixels(canvas) {
  const { width: w, height: h } = canvas;
  let img = pixelBuffers.get(canvas);
  if (!img || img.width !== w || img.height !== h) {
    img = new ImageData(w, h);
    pixelBuffers.set(canvas, img);
  } else {
    new Uint32Array(img.data.buffer).fill(0);
  }
  return img;
}

/** Opaque `rgb` as one little-endian RGBA pixel. */
function packRgb(rgb) {
  return ((255 << 24) | (rgb[2] << 16) | (rgb[1] << 8) | rgb[0]) >>> 0;
}

/** Replace a canvas's pixels with `mask` in `rgb` (opaque inside, clear outside). */
export function paintMask(canvas, mask, rgb) {
  const img = clearedPixels(canvas);
  const px = new Uint32Array(img.data.buffer);
  const packed = packRgb(rgb);
  if (mask) for (let i = 0; i < px.length; i++) if (mask[i]) px[i] = packed;
  canvas.getContext("2d").putImageData(img, 0, 0);
}

/**
 * Replace a canvas's pixels with candidate `k` of a decode result (as `lowResToMask` computes
 * it at the canvas's size) in `rgb`, written straight into the pixels: no mask array between.
 */
export function paintLowRes(canvas, result, k, rgb) {
  const img = clearedPixels(canvas);
  lowResToMask(result, k, canvas.height, canvas.width, new Uint32Array(img.data.buffer),
               packRgb(rgb));
  canvas.getContext("2d").putImageData(img, 0, 0);
}

/**
 * Draw brush/eraser strokes on a layer whose pixels are image pixels times `scale`. A stroke is
 * {mode: "add" | "erase", radius (image px), points: [[x, y], ...] (image px)}.
 */
export function drawStrokes(canvas, strokes, scale, rgb) {
  const ctx = canvas.getContext("2d");
  for (const stroke of strokes) drawStroke(ctx, stroke, scale, rgb, 0);
}

/** Draw stroke points from index `from - 1` on (the live part of a stroke being drawn). */
export function drawStroke(ctx, stroke, scale, rgb, from = 0) {
  const pts = stroke.points;
  if (!pts.length) return;
  ctx.save();
  ctx.globalCompositeOperation = stroke.mode === "erase" ? "destination-out" : "source-over";
  ctx.strokeStyle = ctx.fillStyle = `rgb(${rgb[0]},${rgb[1]},${rgb[2]})`;
  ctx.lineWidth = 2 * stroke.radius * scale;
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  const start = Math.max(0, from - 1);
  if (pts.length - start === 1) {
    ctx.beginPath();
    ctx.arc(pts[start][0] * scale, pts[start][1] * scale, stroke.radius * scale, 0, 2 * Math.PI);
    ctx.fill();
  } else {
    ctx.beginPath();
    ctx.moveTo(pts[start][0] * scale, pts[start][1] * scale);
    for (let i = start + 1; i < pts.length; i++) ctx.lineTo(pts[i][0] * scale, pts[i][1] * scale);
    ctx.stroke();
  }
  ctx.restore();
}

/** The canvas's mask: alpha >= 128 inside, as a Uint8Array(h * w). */
export function canvasMask(canvas) {
  const { width: w, height: h } = canvas;
  const data = canvas.getContext("2d", { willReadFrequently: true }).getImageData(0, 0, w, h).data;
  const mask = new Uint8Array(w * h);
  for (let i = 0; i < w * h; i++) if (data[4 * i + 3] >= 128) mask[i] = 1;
  return mask;
}

/**
 * The exact full-size mask (Uint8Array(H * W)): `base` (an H x W mask or null: a manual mask)
 * with the strokes replayed at image resolution.
 */
export function fullMask(base, strokes, H, W) {
  if (!strokes.length) return base ? base.slice() : new Uint8Array(H * W);
  const canvas = new OffscreenCanvas(W, H);
  paintMask(canvas, base, [255, 255, 255]);
  drawStrokes(canvas, strokes, 1, [255, 255, 255]);
  return canvasMask(canvas);
}

/**
 * Paint masks given as crops ({crop: {x, y, w, h, mask}, rgb}) of an H x W image into a layer
 * of `scale` times the image's size, offset by (ox, oy) image px: translucent fills with
 * opaque outlines `line` layer px wide (dashed, `dash` layer px on and off, when `dash` > 0).
 * Only each crop's box is visited.
 */
function paintCrops(img, entries, scale, ox, oy, alpha, outlineAlpha, dash = 0, line = 1) {
  const { width: w, height: h } = img;
  const px = new Uint32Array(img.data.buffer);
  for (const { crop, rgb } of entries) {
    if (!crop.w) continue;
    const fill = ((alpha << 24) | (rgb[2] << 16) | (rgb[1] << 8) | rgb[0]) >>> 0;
    const edgeRgba = ((outlineAlpha << 24) | (rgb[2] << 16) | (rgb[1] << 8) | rgb[0]) >>> 0;
    const i0 = Math.max(0, Math.floor((crop.y - oy) * scale));
    const i1 = Math.min(h, Math.ceil((crop.y + crop.h - oy) * scale));
    const j0 = Math.max(0, Math.floor((crop.x - ox) * scale));
    const j1 = Math.min(w, Math.ceil((crop.x + crop.w - ox) * scale));
    const at = (i, j) => {
      // the crop's pixel under layer pixel (i, j), 0 outside
      const y = Math.floor((i + 0.5) / scale + oy) - crop.y;
      const x = Math.floor((j + 0.5) / scale + ox) - crop.x;
      return x >= 0 && y >= 0 && x < crop.w && y < crop.h ? crop.mask[y * crop.w + x] : 0;
    };
    for (let i = i0; i < i1; i++) {
      for (let j = j0; j < j1; j++) {
        if (!at(i, j)) continue;
        let edge = i < line || j < line || i >= h - line || j >= w - line;
        for (let d = 1; d <= line && !edge; d++) {
          edge = !at(i, j - d) || !at(i, j + d) || !at(i - d, j) || !at(i + d, j);
        }
        const on = edge && (!dash || Math.floor((i + j) / dash) % 2 === 0);
        px[i * w + j] = on ? edgeRgba : fill;
      }
    }
  }
}

/**
 * The composite of accepted masks ({crop, rgb}) over an H x W image: one layer of at most
 * MAX_COMPOSITE px long side, rebuilt only when the list changes.
 */
export function buildComposite(entries, H, W, { alpha = 110, outlineAlpha = 255, dash = 0,
                                                line = 1, maxSide = MAX_COMPOSITE } = {}) {
  const [h, w] = layerSize(H, W, maxSide);
  const canvas = new OffscreenCanvas(w, h);
  const img = new ImageData(w, h);
  paintCrops(img, entries, w / W, 0, 0, alpha, outlineAlpha, dash, line);
  canvas.getContext("2d").putImageData(img, 0, 0);
  return canvas;
}

/** One mask's highlight: a layer of its box only, with `rect` [x, y, w, h] in image px. */
export function buildHighlight(crop, rgb, { alpha = 80 } = {}) {
  if (!crop.w) return { canvas: null, rect: null };
  const canvas = new OffscreenCanvas(crop.w + 2, crop.h + 2);
  const img = new ImageData(crop.w + 2, crop.h + 2);
  paintCrops(img, [{ crop, rgb }], 1, crop.x - 1, crop.y - 1, alpha, 255);
  canvas.getContext("2d").putImageData(img, 0, 0);
  return { canvas, rect: [crop.x - 1, crop.y - 1, crop.w + 2, crop.h + 2] };
}

/**
 * The proposals' layer (prefilled masks waiting for review): lighter fills and dashed outlines
 * 2 layer px wide, at most MAX_DISPLAY px long side (so that the outline shows at fit).
 */
export function buildProposals(entries, H, W) {
  const [, w] = layerSize(H, W, MAX_DISPLAY);
  const dash = Math.max(4, Math.round(6 * (w / W))); // about 6 image px on, 6 off
  return buildComposite(entries, H, W, { alpha: 45, dash, line: 2, maxSide: MAX_DISPLAY });
}
