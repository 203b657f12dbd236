// The two decoders behind one interface: the in-browser one (ONNX Runtime Web in a worker,
// ../decoder-worker.js) and the server's predict route (the fallback when WASM is unavailable,
// or forced with ?decoder=server). A result is
//   {kind, scores: number[], request, raw (browser: the worker's reply), masks (server: the
//    route's masks with their RLE and mask_input tokens)}
// and `request` is what replays it exactly (the accept's full-size decode).

import { DecoderClient } from "../decoder-client.js";
import { api, track } from "./api.js";
import { logitsToMask, paintLowRes, paintMask, resampleMask } from "./layers.js";
import { rleToMask } from "./rle.js";

export class Decoders {
  constructor() {
    this.mode = "starting"; // "browser" | "server"
    this.reason = "";
    this.threads = 0;
    this.client = null;
    this.embedding = null; // {imageId, promise}: the open image's, in the worker
    this.ahead = null; // {imageId, bytes: Promise<ArrayBuffer | null>}: the next image's
  }

  /** Start the browser decoder, or fall back to the server (saying why). */
  async start({ forceServer = false, warmup = 150, numThreads = 0, timeoutMs = 60000 } = {}) {
    if (forceServer) return this.useServer("forced by ?decoder=server");
    if (typeof WebAssembly === "undefined") return this.useServer("WASM unavailable: no WebAssembly");
    try {
      const model = await api.get("/api/model");
      this.client = new DecoderClient(new URL("../decoder-worker.js", import.meta.url), { timeoutMs });
      const info = await track(this.client.init({ manifestUrl: model.manifest_url, warmup,
                                                  numThreads: numThreads || undefined }));
      this.mode = "browser";
      this.threads = info.numThreads;
      this.info = info;
    } catch (err) {
      this.useServer(`WASM unavailable: ${err.message}`);
    }
    return this.mode;
  }

  useServer(reason) {
    if (this.client) this.client.terminate();
    this.client = null;
    this.mode = "server";
    this.reason = reason;
    return this.mode;
  }

  /** Fetch the next image's embedding bytes ahead of opening it (browser mode only). */
  prefetch(image) {
    if (this.mode !== "browser" || this.ahead?.imageId === image.id) return;
    const bytes = fetch(embeddingUrl(image), { credentials: "same-origin" })
      .then((r) => (r.ok ? r.arrayBuffer() : null))
      .catch(() => null);
    this.ahead = { imageId: image.id, bytes };
  }

  /** Fetch an image's embedding into the worker (once per image); server mode: nothing. */
  setImage(image) {
    if (this.mode !== "browser") {
      this.embedding = { imageId: image.id, promise: Promise.resolve() };
      return this.embedding.promise;
    }
    const ahead = this.ahead?.imageId === image.id ? this.ahead.bytes : Promise.resolve(null);
    this.ahead = null;
    const promise = track(ahead.then((buffer) => this.client.setEmbedding({
      ...(buffer ? { buffer } : { url: embeddingUrl(image) }),
      dtype: "float32",
      originalSize: [image.height, image.width],
    })));
    this.embedding = { imageId: image.id, promise };
    return promise;
  }

  /**
   * Decode a prompt: {points, labels, box} on `image`, with `previous` (the prior result and
   * its selected candidate, fed back as the mask prompt) or null. Multimask only for a single
   * point without a box, as SAM's interactive protocol.
   */
  async decode(image, { points, labels, box }, previous) {
    const multimask = points.length === 1 && !box;
    if (this.mode === "browser") {
      await this.embedding.promise;
      let maskInput = null;
      if (previous && previous.result.kind === "browser") {
        // the selected candidate's low-res logits (as {previous: k}, but explicit: it stays
        // right after an undo or the accept's full-size decode)
        const n = previous.result.raw.lowResSize[0] * previous.result.raw.lowResSize[1];
        const k = previous.selected;
        maskInput = previous.result.raw.lowRes.slice(k * n, (k + 1) * n);
      }
      const request = { points, labels, box, maskInput, multimask };
      const raw = await track(this.client.decode({ ...request, output: "low" }));
      return { kind: "browser", scores: Array.from(raw.scores), request, raw };
    }
    const body = { points, labels, box, multimask, mask_input: null };
    if (previous && previous.result.kind === "server") {
      body.mask_input = previous.result.masks[previous.selected].mask_input;
    }
    const r = await api.post(`/api/images/${image.id}/predict`, body);
    return {
      kind: "server",
      scores: r.masks.map((m) => m.predicted_iou),
      request: body,
      masks: r.masks,
      full: [],
    };
  }

  /** Paint candidate k into a display layer `canvas` over the image, in `rgb`. */
  paintDisplay(canvas, result, k, image, rgb) {
    if (result.kind === "browser") return paintLowRes(canvas, result.raw, k, rgb);
    const { height: h, width: w } = canvas;
    return paintMask(canvas, resampleMask(serverMask(result, k), image.height, image.width, h, w),
                     rgb);
  }

  /** Candidate k at full size (H * W), exactly as SamPredictor.predict gives it. */
  async exactMask(result, k, image) {
    if (result.kind === "server") return serverMask(result, k);
    if (this.mode !== "browser") throw new Error("the browser decoder is gone; prompt again");
    const raw = await track(this.client.decode({ ...result.request, output: "full" }));
    return logitsToMask(raw.masks, k, image.height, image.width);
  }
}

function embeddingUrl(image) {
  return `/api/images/${image.id}/embedding?dtype=float32`;
}

function serverMask(result, k) {
  if (!result.full[k]) result.full[k] = rleToMask(result.masks[k].segmentation);
  return result.full[k];
}
