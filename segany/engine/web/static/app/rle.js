// COCO run-length encoding in the browser.
//
// A COCO RLE is {size: [H, W], counts}: runs of 0s and 1s over the mask read column-major
// (down the first column, then the next), starting with a run of 0s (maybe of length 0).
// `counts` is either a list of run lengths (the uncompressed form) or a string in
// pycocotools' compressed form (rleToString): each run, minus the run two before it from the
// third on, as a signed LEB128-like number of 5-bit groups, least significant first, each
// group + 48 as one character, 0x20 = "more groups follow", 0x10 of the last group = sign.
// Masks here are row-major Uint8Array(H * W) (1 inside), as canvases and ImageData are.

/** The run lengths of a compressed counts string. */
export function decodeCounts(s) {
  const counts = [];
  let p = 0;
  while (p < s.length) {
    let x = 0;
    let k = 0;
    let more = 1;
    while (more) {
      if (p >= s.length) throw new Error("truncated RLE counts string");
      const c = s.charCodeAt(p) - 48;
      x |= (c & 0x1f) << (5 * k);
      more = c & 0x20;
      p += 1;
      k += 1;
      if (!more && (c & 0x10)) x |= -1 << (5 * k);
    }
    if (counts.length > 2) x += counts[counts.length - 2];
    counts.push(x);
  }
  return counts;
}

/** The compressed counts string of a list of run lengths (pycocotools' rleToString). */
export function encodeCounts(counts) {
  let s = "";
  for (let i = 0; i < counts.length; i++) {
    let x = counts[i];
    if (i > 2) x -= counts[i - 2];
    let more = 1;
    while (more) {
      let c = x & 0x1f;
      x >>= 5;
      more = (c & 0x10) ? x !== -1 : x !== 0;
      if (more) c |= 0x20;
      s += String.fromCharCode(c + 48);
    }
  }
  return s;
}

/** Row-major Uint8Array(H * W) of a COCO RLE (compressed or uncompressed counts). */
export function rleToMask(rle) {
  const [h, w] = rle.size;
  const counts = typeof rle.counts === "string" ? decodeCounts(rle.counts) : rle.counts;
  const mask = new Uint8Array(h * w);
  let pos = 0; // column-major position
  let total = 0;
  for (let i = 0; i < counts.length; i++) {
    const n = counts[i];
    if (n < 0) throw new Error(`negative run length ${n} in RLE counts`);
    total += n;
    if (total > h * w) throw new Error(`RLE runs add up to more than ${h}x${w}`);
    if (i % 2 === 1) {
      for (let j = pos; j < pos + n; j++) {
        const x = (j / h) | 0;
        mask[(j - x * h) * w + x] = 1;
      }
    }
    pos += n;
  }
  if (total !== h * w) throw new Error(`RLE runs add up to ${total}, not ${h}x${w} = ${h * w}`);
  return mask;
}

/**
 * A COCO RLE decoded into its bounding box only: {x, y, w, h, mask: Uint8Array(w * h)}
 * (row-major; x, y the box's top-left pixel; w = h = 0 for an empty mask). Memory grows with
 * the object, not the image (a 4000 x 3000 image's many small masks).
 */
export function rleToCrop(rle) {
  const [H, W] = rle.size;
  const counts = typeof rle.counts === "string" ? decodeCounts(rle.counts) : rle.counts;
  let x0 = W;
  let x1 = -1;
  let y0 = H;
  let y1 = -1;
  let pos = 0;
  for (let i = 0; i < counts.length; i++) {
    const n = counts[i];
    if (i % 2 === 1 && n > 0) {
      const c0 = (pos / H) | 0;
      const c1 = ((pos + n - 1) / H) | 0;
      x0 = Math.min(x0, c0);
      x1 = Math.max(x1, c1);
      if (c0 !== c1) {
        y0 = 0;
        y1 = H - 1;
      } else {
        y0 = Math.min(y0, pos - c0 * H);
        y1 = Math.max(y1, pos + n - 1 - c0 * H);
      }
    }
    pos += n;
  }
  if (pos !== H * W) throw new Error(`RLE runs add up to ${pos}, not ${H}x${W} = ${H * W}`);
  if (x1 < 0) return { x: 0, y: 0, w: 0, h: 0, mask: new Uint8Array(0) };
  const w = x1 - x0 + 1;
  const h = y1 - y0 + 1;
  const mask = new Uint8Array(w * h);
  pos = 0;
  for (let i = 0; i < counts.length; i++) {
    const n = counts[i];
    if (i % 2 === 1) {
      for (let j = pos; j < pos + n; j++) {
        const x = (j / H) | 0;
        mask[(j - x * H - y0) * w + (x - x0)] = 1;
      }
    }
    pos += n;
  }
  return { x: x0, y: y0, w, h, mask };
}

/** The full H x W mask of a crop. */
export function cropToMask(crop, H, W) {
  const mask = new Uint8Array(H * W);
  for (let i = 0; i < crop.h; i++) {
    mask.set(crop.mask.subarray(i * crop.w, (i + 1) * crop.w), (crop.y + i) * W + crop.x);
  }
  return mask;
}

/** The uncompressed COCO RLE {size: [H, W], counts: [int, ...]} of a row-major mask. */
export function maskToRle(mask, h, w) {
  const counts = [];
  let value = 0;
  let run = 0;
  for (let x = 0; x < w; x++) {
    for (let y = 0; y < h; y++) {
      const v = mask[y * w + x] ? 1 : 0;
      if (v !== value) {
        counts.push(run);
        run = 0;
        value = v;
      }
      run += 1;
    }
  }
  counts.push(run);
  return { size: [h, w], counts };
}

/** Pixels inside a mask (any typed array, non-zero = inside). */
export function maskArea(mask) {
  let n = 0;
  for (let i = 0; i < mask.length; i++) if (mask[i]) n += 1;
  return n;
}
