// Page-side handle on decoder-worker.js: one promise per request.
//
//   import { DecoderClient, drawMask } from "./decoder-client.js";
//   const decoder = new DecoderClient(new URL("./decoder-worker.js", import.meta.url));
//   const info = await decoder.init({ manifestUrl: "/model/manifest.json", warmup: 150 });
//   await decoder.setEmbedding({ url: "/emb.bin", dtype: "float32", originalSize: [H, W] });
//   const r = await decoder.decode({ points: [[x, y]], labels: [1], multimask: true });
//   drawMask(canvas, r, bestIndex);
//
// The message protocol is documented at the top of decoder-worker.js.

export class DecoderClient {
  /** `timeoutMs` > 0 rejects a request the worker has not answered in that time. */
  constructor(workerUrl, { timeoutMs = 0 } = {}) {
    this.worker = new Worker(workerUrl, { type: "module" });
    this.timeoutMs = timeoutMs;
    this.pending = new Map();
    this.nextId = 1;
    this.worker.onmessage = (event) => {
      const msg = event.data;
      const p = this.pending.get(msg.id);
      if (!p) return;
      this.settle(msg.id);
      if (msg.type === "error") p.reject(new Error(msg.message));
      else p.resolve(msg);
    };
    this.worker.onerror = (event) => {
      const err = new Error(`decoder worker failed: ${event.message || "script error"}`);
      for (const [id, p] of this.pending) {
        this.settle(id);
        p.reject(err);
      }
    };
  }

  settle(id) {
    const p = this.pending.get(id);
    if (p && p.timer) clearTimeout(p.timer);
    this.pending.delete(id);
  }

  request(type, fields = {}, transfer = []) {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const entry = { resolve, reject, timer: null };
      if (this.timeoutMs > 0) {
        entry.timer = setTimeout(() => {
          this.settle(id);
          reject(new Error(`decoder worker gave no answer to ${type} in ${this.timeoutMs} ms`));
        }, this.timeoutMs);
      }
      this.pending.set(id, entry);
      this.worker.postMessage({ ...fields, type, id }, transfer);
    });
  }

  /** {manifestUrl, numThreads?, warmup?} -> the "ready" reply. */
  init(options) {
    return this.request("init", options);
  }

  /** {url | buffer, dtype, originalSize: [H, W]} -> the "embedding" reply. */
  setEmbedding(options) {
    return this.request("embedding", options, options.buffer ? [options.buffer] : []);
  }

  /** {points, labels, box, maskInput, multimask, output} -> the "result" reply. */
  decode(prompt) {
    return this.request("decode", prompt);
  }

  terminate() {
    this.worker.terminate();
  }
}

/** Index of the highest score of a result. */
export function bestIndex(result) {
  let k = 0;
  for (let i = 1; i < result.scores.length; i++) if (result.scores[i] > result.scores[k]) k = i;
  return k;
}

/**
 * Draw mask `index` of a decode result on `canvas` (sized as the original image) as a coloured
 * overlay: the full-size logits when the result has them, else the valid block of the low-res
 * logits scaled up by the canvas (bilinear smoothing off: the pixels show as blocks).
 */
export function drawMask(canvas, result, index, rgba = [30, 144, 255, 140]) {
  const full = result.masks !== null;
  const [h, w] = full ? result.maskSize : result.lowResSize;
  const data = full ? result.masks : result.lowRes;
  const offset = index * h * w;
  const img = new ImageData(w, h);
  const px = img.data;
  for (let i = 0; i < h * w; i++) {
    if (data[offset + i] > 0) {
      px[4 * i] = rgba[0];
      px[4 * i + 1] = rgba[1];
      px[4 * i + 2] = rgba[2];
      px[4 * i + 3] = rgba[3];
    }
  }
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  if (full) {
    ctx.putImageData(img, 0, 0);
    return;
  }
  // The low-res logits cover the padded input frame; their top-left lowResValid block (in
  // low-res pixels, maybe fractional) is the image, which the canvas shows at its own size.
  const [vh, vw] = result.lowResValid;
  const tmp = new OffscreenCanvas(w, h);
  tmp.getContext("2d").putImageData(img, 0, 0);
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(tmp, 0, 0, vw, vh, 0, 0, canvas.width, canvas.height);
}
