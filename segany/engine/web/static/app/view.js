// The viewport: one canvas showing the image and its layers through a pan/zoom transform
// (screen = image * scale + offset, in device pixels). Layers are image-resolution (or
// display-resolution) OffscreenCanvases drawn stretched over the image; a frame only composes
// them (drawImage), so panning and zooming a 4000 x 3000 image stays smooth.

export class Viewport {
  constructor(canvas) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d");
    this.image = null; // ImageBitmap
    this.W = 1;
    this.H = 1;
    this.scale = 1;
    this.tx = 0;
    this.ty = 0;
    this.layers = []; // [{canvas, alpha, rect?}] over the image (rect: [x, y, w, h] image px)
    this.overlay = null; // (ctx, viewport) => void, drawn in screen space
    this.frame = 0;
    this.onRender = null;
    this.frameTimes = []; // the last frames' draw times (ms)
    new ResizeObserver(() => this.resize()).observe(canvas.parentElement);
    this.resize();
  }

  resize() {
    const rect = this.canvas.parentElement.getBoundingClientRect();
    const dpr = window.devicePixelRatio || 1;
    const w = Math.max(1, Math.round(rect.width * dpr));
    const h = Math.max(1, Math.round(rect.height * dpr));
    if (w === this.canvas.width && h === this.canvas.height) return;
    const first = this.canvas.width <= 1;
    this.canvas.width = w;
    this.canvas.height = h;
    if (first || !this.userMoved) this.fit();
    else this.render();
  }

  setImage(bitmap, W, H) {
    this.image = bitmap;
    this.W = W;
    this.H = H;
    this.userMoved = false;
    this.fit();
  }

  /** Fit the whole image in the canvas, centred. */
  fit() {
    const { width, height } = this.canvas;
    this.scale = Math.min(width / this.W, height / this.H) * 0.96;
    this.tx = (width - this.W * this.scale) / 2;
    this.ty = (height - this.H * this.scale) / 2;
    this.userMoved = false;
    this.requestRender();
  }

  /** Zoom by `factor` keeping the device pixel (sx, sy) fixed. */
  zoomAt(sx, sy, factor) {
    const scale = Math.min(64, Math.max(0.01, this.scale * factor));
    const f = scale / this.scale;
    this.tx = sx - (sx - this.tx) * f;
    this.ty = sy - (sy - this.ty) * f;
    this.scale = scale;
    this.userMoved = true;
    this.requestRender();
  }

  zoomCentre(factor) {
    this.zoomAt(this.canvas.width / 2, this.canvas.height / 2, factor);
  }

  panBy(dx, dy) {
    this.tx += dx;
    this.ty += dy;
    this.userMoved = true;
    this.requestRender();
  }

  /** Device pixels of a mouse event's position on the canvas. */
  devicePoint(event) {
    const rect = this.canvas.getBoundingClientRect();
    const dpr = window.devicePixelRatio || 1;
    return [(event.clientX - rect.left) * dpr, (event.clientY - rect.top) * dpr];
  }

  /** Image pixel coordinates (x along the width) of a device point. */
  toImage([sx, sy]) {
    return [(sx - this.tx) / this.scale, (sy - this.ty) / this.scale];
  }

  toScreen([x, y]) {
    return [x * this.scale + this.tx, y * this.scale + this.ty];
  }

  requestRender() {
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      this.render();
    });
  }

  /** Draw now (the click-to-mask path draws at once instead of waiting for a frame). */
  render() {
    const t0 = performance.now();
    const { ctx, canvas } = this;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    if (this.image) {
      ctx.setTransform(this.scale, 0, 0, this.scale, this.tx, this.ty);
      ctx.imageSmoothingEnabled = this.scale < 2;
      ctx.drawImage(this.image, 0, 0, this.W, this.H);
      ctx.imageSmoothingEnabled = false;
      for (const layer of this.layers) {
        if (!layer.canvas) continue;
        ctx.globalAlpha = layer.alpha ?? 1;
        if (layer.rect) ctx.drawImage(layer.canvas, ...layer.rect); // a part of the image
        else ctx.drawImage(layer.canvas, 0, 0, this.W, this.H);
      }
      ctx.globalAlpha = 1;
      ctx.setTransform(1, 0, 0, 1, 0, 0);
      if (this.overlay) this.overlay(ctx, this);
    }
    this.frameTimes.push(performance.now() - t0);
    if (this.frameTimes.length > 240) this.frameTimes.shift();
    if (this.onRender) this.onRender();
  }
}
