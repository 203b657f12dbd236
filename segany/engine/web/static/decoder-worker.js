// SAM's prompt decoder in a Web Worker, on ONNX Runtime Web (WASM backend).
//
// Load as a module worker: new Worker("decoder-worker.js", {type: "module"}). It loads the
// onnxruntime-web build from ./vendor/ (installed by `python -m segany.engine.web.build`, never
// from a CDN) and segany's ONNX decoder export, described by the export folder's manifest.json:
// for "low" decodes the split decoder when the export has it (decoder_image.onnx, run once per
// embedding, and decoder_prompt.onnx, run per prompt without projecting the first layer's image
// tokens again), else decoder.onnx (the official SamOnnxModel interface; also with `quantized`
// or `split: false`); "full" decodes always run decoder.onnx (or decoder.int8.onnx).
//
// Protocol (every request carries an `id`; every reply echoes it; a failed request answers
// {type: "error", id, message}):
//   {type: "init", id, manifestUrl, quantized?: false, split?: true, numThreads?, warmup?: 150,
//    sessionOptions?}
//       -> {type: "ready", id, backend, quantized, split, numThreads, crossOriginIsolated, loadMs,
//           warmupRuns, warmupMs, imgSize, embeddingShape, lowResSize, numMaskTokens}
//   {type: "embedding", id, url | buffer, dtype: "float32" | "float16", originalSize: [H, W]}
//       -> {type: "embedding", id, originalSize, inputSize, fetchMs, projectMs}
//   {type: "decode", id, points: [[x, y], ...], labels: [1, 0, ...], box: [x0, y0, x1, y1] | null,
//    maskInput: null | {previous: k} | Float32Array(L * L), multimask: true, output: "low" | "full"}
//       -> {type: "result", id, scores: Float32Array(M), lowRes: Float32Array(M * L * L),
//           lowResSize: [L, L], lowResValid: [h, w], masks: Float32Array(M * H * W) | null,
//           maskSize: [H, W] | null, inputSize: [h, w], originalSize: [H, W], decodeMs}
// Points and boxes are pixels of the original image (x along the width); the worker maps them to
// the decoder's input frame as ResizeLongestSide.apply_coords does and adds the padding point
// (label -1) when there is no box, as SamPredictor does. M is 3 with multimask, else 1 (the
// single-mask token); a decoder exported with return_single_mask always gives its one mask.
// lowRes are the low-res logits (threshold 0) of the padded input frame; their top-left
// lowResValid block (low-res pixels, may be fractional) is the image.
// {previous: k} feeds the previous result's k-th low-res logits back as the mask prompt.
// "low" skips the upscale to the original size (masks is null): draw lowRes scaled instead. A
// decoder graph without the "masks" output (only iou_predictions, low_res_masks) works too, for
// "low" only.

import * as ort from "./vendor/ort.wasm.min.mjs";

let session = null; // the "low" decoder: decoder_prompt.onnx (split) or decoder.onnx
let fullSession = null; // the "full" decoder: decoder.onnx (the same session without the split)
let imageSession = null; // decoder_image.onnx (split only): the embedding's tokens, projected
let model = null; // {imgSize, embeddingShape, lowResSize, numMaskTokens, returnSingleMask}
let image = null; // {embedding: ort.Tensor, split (image half's outputs), originalSize, inputSize}
// The outputs a "low" decode fetches (decoder.onnx's upscaled masks are not copied out).
const LOW_OUTPUTS = ["iou_predictions", "low_res_masks"];
let previous = null; // {lowRes: Float32Array, count: M}

function preprocessShape(h, w, longSide) {
  // As segany.transforms.get_preprocess_shape: the longest side becomes longSide, half up.
  const scale = (longSide * 1.0) / Math.max(h, w);
  return [Math.floor(h * scale + 0.5), Math.floor(w * scale + 0.5)];
}

function halfToFloat(h) {
  const s = (h & 0x8000) ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const f = h & 0x3ff;
  if (e === 0) return s * f * 2 ** -24;
  if (e === 31) return f ? NaN : s * Infinity;
  return s * (1 + f / 1024) * 2 ** (e - 15);
}

function toFloat32(buffer, dtype) {
  if (dtype === "float32") return new Float32Array(buffer);
  if (dtype === "float16") {
    const half = new Uint16Array(buffer);
    const out = new Float32Array(half.length);
    for (let i = 0; i < half.length; i++) out[i] = halfToFloat(half[i]);
    return out;
  }
  throw new Error(`embedding dtype must be "float32" or "float16"; got ${dtype}`);
}

/** The inputs of `target` (a session) for a prompt on an embedding and its split outputs. */
function feeds(target, embedding, split, coords, labels, maskInput, hasMask, sizeHW) {
  const n = labels.length;
  const [l0, l1] = model.lowResSize;
  const all = {
    ...split, // the image half's image_tokens, image_keys, image_values, image_queries
    image_embeddings: embedding,
    point_coords: new ort.Tensor("float32", Float32Array.from(coords), [1, n, 2]),
    point_labels: new ort.Tensor("float32", Float32Array.from(labels), [1, n]),
    mask_input: new ort.Tensor("float32", maskInput, [1, 1, l0, l1]),
    has_mask_input: new ort.Tensor("float32", Float32Array.of(hasMask), [1]),
    orig_im_size: new ort.Tensor("float32", Float32Array.from(sizeHW), [2]),
  };
  // the prompt half has no image_embeddings and orig_im_size, a low-res-only graph no orig_im_size
  return Object.fromEntries(target.inputNames.map((name) => [name, all[name]]));
}

async function init(msg) {
  const t0 = performance.now();
  if (!self.crossOriginIsolated) {
    // Without COOP/COEP there is no SharedArrayBuffer: one thread only.
    ort.env.wasm.numThreads = 1;
  } else {
    ort.env.wasm.numThreads = msg.numThreads || navigator.hardwareConcurrency || 1;
  }
  ort.env.wasm.wasmPaths = new URL("./vendor/", import.meta.url).href;
  ort.env.wasm.proxy = false; // already off the main thread
  const manifestUrl = new URL(msg.manifestUrl, self.location.href);
  const manifest = await (await fetch(manifestUrl)).json();
  const files = manifest.files || {};
  image = null; // an embedding set for earlier sessions (and its split outputs) is stale
  previous = null;
  const split = !msg.quantized && msg.split !== false && Boolean(files.decoder_image)
    && Boolean(files.decoder_prompt);
  const key = msg.quantized ? "decoder_int8" : "decoder";
  if (!files[key]) throw new Error(`${manifestUrl} lists no ${key}${msg.quantized ? " (export with --quantize)" : ""}`);
  const load = async (entry) => {
    const url = new URL(entry.file, manifestUrl);
    const response = await fetch(url);
    if (!response.ok) throw new Error(`cannot fetch ${url}: HTTP ${response.status}`);
    const bytes = new Uint8Array(await response.arrayBuffer());
    return ort.InferenceSession.create(bytes, {
      executionProviders: ["wasm"],
      graphOptimizationLevel: "all",
      ...(msg.sessionOptions || {}),
    });
  };
  [fullSession, session, imageSession] = await Promise.all([
    load(files[key]),
    split ? load(files.decoder_prompt) : null,
    split ? load(files.decoder_image) : null,
  ]);
  session = session || fullSession;
  model = {
    imgSize: manifest.img_size,
    embeddingShape: manifest.embedding_shape,
    lowResSize: manifest.low_res_mask_size,
    numMaskTokens: manifest.num_mask_tokens,
    returnSingleMask: Boolean(manifest.return_single_mask),
    maskThreshold: manifest.mask_threshold ?? 0.0,
  };
  const loadMs = performance.now() - t0;
  // The WASM JIT reaches full speed only after ~100 runs: warm up before the first click.
  const runs = msg.warmup ?? 150;
  const t1 = performance.now();
  if (runs > 0) {
    const size = model.embeddingShape.reduce((a, b) => a * b, 1);
    const emb = new ort.Tensor("float32", new Float32Array(size), model.embeddingShape);
    const proj = await project(emb);
    const [l0, l1] = model.lowResSize;
    const s = model.imgSize;
    const zeros = new Float32Array(l0 * l1);
    // With and without a mask input, 1 or 2 points; decoder.onnx (every run without the split,
    // one in eight with it) through both branches of its last resize.
    for (let i = 0; i < runs; i++) {
      const target = i % 8 === 7 ? fullSession : session;
      const f = i % 4 < 2
        ? feeds(target, emb, proj, [s / 2, s / 3, 0, 0], [1, -1], zeros, 0, [s, s])
        : feeds(target, emb, proj, [s / 2, s / 3, s / 4, s / 5, 0, 0], [1, 0, -1], zeros, 0,
                [s + 2, s + 1]);
      if (i % 2) f.has_mask_input = new ort.Tensor("float32", Float32Array.of(1), [1]);
      await (target === fullSession ? target.run(f) : target.run(f, LOW_OUTPUTS));
    }
  }
  return {
    type: "ready",
    backend: "wasm",
    quantized: Boolean(msg.quantized),
    split,
    numThreads: ort.env.wasm.numThreads,
    crossOriginIsolated: self.crossOriginIsolated,
    loadMs,
    warmupRuns: runs,
    warmupMs: performance.now() - t1,
    imgSize: model.imgSize,
    embeddingShape: model.embeddingShape,
    lowResSize: model.lowResSize,
    numMaskTokens: model.numMaskTokens,
  };
}

/** The split decoder's per-image inputs for an embedding tensor ({} without the split). */
async function project(embedding) {
  if (!imageSession) return {};
  const out = await imageSession.run({ image_embeddings: embedding });
  return Object.fromEntries(imageSession.outputNames.map((name) => [name, out[name]]));
}

async function setEmbedding(msg) {
  if (!session) throw new Error("init first");
  const t0 = performance.now();
  const buffer = msg.buffer ?? (await (await fetch(new URL(msg.url, self.location.href))).arrayBuffer());
  const data = toFloat32(buffer, msg.dtype || "float32");
  const want = model.embeddingShape.reduce((a, b) => a * b, 1);
  if (data.length !== want) {
    throw new Error(`embedding has ${data.length} values; shape ${model.embeddingShape} needs ${want}`);
  }
  const [h, w] = msg.originalSize.map(Number);
  if (!(h > 0 && w > 0)) throw new Error(`originalSize must be [H, W] > 0; got ${msg.originalSize}`);
  const embedding = new ort.Tensor("float32", data, model.embeddingShape);
  const t1 = performance.now();
  const split = await project(embedding);
  image = { embedding, split, originalSize: [h, w], inputSize: preprocessShape(h, w, model.imgSize) };
  previous = null;
  return { type: "embedding", originalSize: image.originalSize, inputSize: image.inputSize,
           fetchMs: t1 - t0, projectMs: performance.now() - t1 };
}

function promptInputs(msg) {
  const [H, W] = image.originalSize;
  const [h, w] = image.inputSize;
  const sx = w / W;
  const sy = h / H;
  const points = msg.points || [];
  const labels = msg.labels || [];
  if (points.length !== labels.length) {
    throw new Error(`${points.length} points but ${labels.length} labels`);
  }
  const coords = [];
  const labs = [];
  points.forEach(([x, y], i) => {
    if (!Number.isFinite(x) || !Number.isFinite(y)) throw new Error(`point ${i} is not finite`);
    coords.push(x * sx, y * sy);
    labs.push(labels[i]);
  });
  if (msg.box) {
    const [x0, y0, x1, y1] = msg.box;
    coords.push(x0 * sx, y0 * sy, x1 * sx, y1 * sy);
    labs.push(2, 3);
  } else if (points.length) {
    coords.push(0, 0);
    labs.push(-1);
  }
  const [l0, l1] = model.lowResSize;
  let mask = new Float32Array(l0 * l1);
  let hasMask = 0;
  const mi = msg.maskInput;
  if (mi && mi.previous !== undefined) {
    if (!previous || mi.previous < 0 || mi.previous >= previous.count) {
      throw new Error(`no previous mask ${mi.previous} to feed back`);
    }
    const n = l0 * l1;
    mask = previous.lowRes.slice(mi.previous * n, (mi.previous + 1) * n);
    hasMask = 1;
  } else if (mi) {
    if (mi.length !== l0 * l1) throw new Error(`maskInput must have ${l0 * l1} values`);
    mask = Float32Array.from(mi);
    hasMask = 1;
  }
  return { coords, labs, mask, hasMask };
}

async function decode(msg) {
  if (!image) throw new Error("set an embedding first");
  const t0 = performance.now();
  const { coords, labs, mask, hasMask } = promptInputs(msg);
  const full = (msg.output || "low") === "full";
  if (full && !fullSession.outputNames.includes("masks")) {
    throw new Error('this decoder has no "masks" output (a low-res-only graph): use output "low"');
  }
  // "low": ask for the input frame's size, so the graph skips its last resize; masks unused.
  const size = full ? image.originalSize : image.inputSize;
  const target = full ? fullSession : session;
  const inputs = feeds(target, image.embedding, image.split, coords, labs, mask, hasMask, size);
  const out = await (full ? target.run(inputs) : target.run(inputs, LOW_OUTPUTS));
  const count = out.iou_predictions.dims[1];
  const pick = count === model.numMaskTokens ? (msg.multimask === false ? [0, 1] : [1, count]) : [0, count];
  const [l0, l1] = model.lowResSize;
  const nLow = l0 * l1;
  const m = pick[1] - pick[0];
  const scores = out.iou_predictions.data.slice(pick[0], pick[1]);
  const lowRes = out.low_res_masks.data.slice(pick[0] * nLow, pick[1] * nLow);
  let masks = null;
  let maskSize = null;
  if (full) {
    const [H, W] = image.originalSize;
    masks = out.masks.data.slice(pick[0] * H * W, pick[1] * H * W);
    maskSize = [H, W];
  }
  previous = { lowRes, count: m };
  const f = model.imgSize / l0;
  const lowResValid = [image.inputSize[0] / f, image.inputSize[1] / f];
  const sent = lowRes.slice(); // previous keeps its own copy for {previous: k}
  const transfer = [scores.buffer, sent.buffer];
  if (masks) transfer.push(masks.buffer);
  const body = { type: "result", scores, lowRes: sent, lowResSize: [l0, l1], lowResValid, masks,
                 maskSize, inputSize: image.inputSize, originalSize: image.originalSize,
                 decodeMs: performance.now() - t0 };
  return [body, transfer];
}

const handlers = { init, embedding: setEmbedding, decode };

// Requests run one at a time, in the order they came (a session runs one inference at a time).
let queue = Promise.resolve();

async function handle(msg) {
  const handler = handlers[msg.type];
  try {
    if (!handler) throw new Error(`unknown message type ${msg.type}; allowed: init, embedding, decode`);
    const reply = await handler(msg);
    const [body, transfer] = Array.isArray(reply) ? reply : [reply, []];
    self.postMessage({ ...body, id: msg.id }, transfer);
  } catch (err) {
    self.postMessage({ type: "error", id: msg.id, message: String(err && err.message ? err.message : err) });
  }
}

self.onmessage = (event) => {
  const msg = event.data || {};
  queue = queue.then(() => handle(msg));
};
