"""Click -> mask drawn in the browser annotation tool (segany/engine/web/static/app/), end to
end, in headless Chromium against a real annotation server (uvicorn on 127.0.0.1) with the
bundled model on the CPU.

A project of generated 1024x768 scenes (``ProceduralScenes``) is served; the tool is opened as
an annotator and driven with real mouse and keyboard events (Playwright). Each timed click is a
new mask (a foreground point inside an object, then Escape); the tool times it from the
pointer event's time stamp to the working mask drawn on the viewport canvas (decode in the
worker, the low-res logits bilinearly upsampled into the display layer, the frame composed),
read back from ``window.seganyTool``. Also timed: a second click on the same mask (the mask
prompt fed back), the first mask after opening the next image (its embedding prefetched by
the server while the previous one was open), and the same clicks with ``?decoder=server``
(the server ``predict`` route, RLE back, drawn), and the viewport's frame draw times while
zooming and panning a 4000x3000 image.

Run: ``python benchmarks/bench_browser_tool.py [--clicks 40]`` (needs chromium, playwright and
``make web``). Prints a Markdown table and writes JSON to ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import RESULTS, write_results
from common import machine as core_machine

TIMEOUT_MS = 600_000


def _stats(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=np.float64)
    return {
        "n": int(a.size),
        "median_ms": float(np.median(a)),
        "p95_ms": float(np.percentile(a, 95)),
        "min_ms": float(a.min()),
    }


def _points(scene, count: int) -> list[tuple[float, float]]:
    """Points deep inside the scene's top-level objects, taking turns."""
    import cv2

    out = []
    objects = [k for k in range(len(scene.masks)) if scene.levels[k] == 0]
    for k in objects:
        depth = cv2.distanceTransform(scene.masks[k].astype(np.uint8), cv2.DIST_L2, 3)
        if depth.max() < 6:
            continue
        y, x = np.unravel_index(int(depth.argmax()), depth.shape)
        out.append((float(x) + 0.5, float(y) + 0.5))
    return [out[i % len(out)] for i in range(count)]


class Page:
    def __init__(self, context, base: str) -> None:
        self.page = context.new_page()
        self.base = base

    def open(self, query: str) -> None:
        self.page.goto(f"{self.base}/?{query}")
        self.page.wait_for_function("window.seganyTool !== undefined")
        self.bounded("window.seganyTool.ready")
        self.idle()

    def idle(self) -> None:
        self.bounded("window.seganyTool.waitIdle()")

    def bounded(self, expression: str):
        """Await a page promise, rejected after TIMEOUT_MS (page.evaluate has no timeout)."""
        return self.page.evaluate(
            """([expression, ms]) => Promise.race([
                (0, eval)(expression),
                new Promise((_, reject) => setTimeout(
                    () => reject(new Error(`${expression} did not settle in ${ms} ms`)), ms)),
            ])""",
            [expression, TIMEOUT_MS],
        )

    def state(self) -> dict:
        return self.page.evaluate("window.seganyTool.state()")

    def click(self, x: float, y: float) -> dict:
        pos = self.page.evaluate(
            """([x, y]) => {
                const v = window.seganyTool.state().view;
                const r = document.getElementById("view").getBoundingClientRect();
                const dpr = window.devicePixelRatio || 1;
                return [r.left + (x * v.scale + v.tx) / dpr, r.top + (y * v.scale + v.ty) / dpr];
            }""",
            [x, y],
        )
        self.page.mouse.click(*pos)
        self.idle()
        return self.state()

    def key(self, key: str) -> None:
        self.page.keyboard.press(key)
        self.idle()


def run(args) -> dict:
    from PIL import Image
    from playwright.sync_api import sync_playwright

    import segany
    from segany.data.scenes import ProceduralScenes
    from segany.engine.server import create_app
    from segany.engine.store import Project
    from segany.engine.web import app_server, launch_chromium

    model = segany.load_model("segany_tiny", precision="fp32", device="cpu")
    scenes = ProceduralScenes(args.images, seed=11, sizes=((768, 1024),))
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        project = Project.init(Path(tmp) / "proj", model="segany_tiny")
        ids = []
        for i in range(args.images):
            buf = io.BytesIO()
            Image.fromarray(scenes[i].image).save(buf, format="PNG")
            ids.append(project.add_image_bytes(buf.getvalue(), f"scene_{i}.png")[0].id)
        big = np.full((3000, 4000, 3), 70, np.uint8)
        big[::50] = 200  # a grid, so the frames have something to draw
        big[:, ::50] = 200
        buf = io.BytesIO()
        Image.fromarray(big).save(buf, format="PNG")
        big_id = project.add_image_bytes(buf.getvalue(), "big.png")[0].id
        _, token = project.add_annotator("bench")
        app = create_app(project, predictor_factory=lambda: segany.SamPredictor(model))
        try:
            with app_server(app) as base, sync_playwright() as pw:
                browser = launch_chromium(pw, TIMEOUT_MS)
                try:
                    context = browser.new_context(viewport={"width": 1600, "height": 1000})
                    context.set_default_timeout(TIMEOUT_MS)
                    page = Page(context, base)
                    page.page.goto(f"{base}/?token={token}")
                    # let the background encoder finish the first images
                    deadline = time.monotonic() + 300
                    while time.monotonic() < deadline:
                        if all(app.state.embeddings.is_cached(i) for i in ids[:2]):
                            break
                        time.sleep(0.2)
                    for mode in ("browser", "server"):
                        q = f"image={ids[0]}&warmup={args.warmup}"
                        if args.threads:
                            q += f"&threads={args.threads}"
                        if mode == "server":
                            q += "&decoder=server"
                        print(f"{mode}: {args.clicks} clicks ...", file=sys.stderr)
                        page.open(q)
                        st = page.state()
                        assert st["decoder"] == mode, st
                        first, second, parts = [], [], []
                        for x, y in _points(scenes[0], args.clicks):
                            st = page.click(x, y)
                            first.append(st["lastClickMs"])
                            parts.append(st["lastTiming"])
                            st = page.click(x + 3, y + 2)  # refine: the mask prompt fed back
                            second.append(st["lastClickMs"])
                            page.key("Escape")
                        out = {
                            "click": _stats(first),
                            "second_click": _stats(second),
                            "threads": st["threads"],
                        }
                        for part in ("decodeMs", "layerMs", "drawMs", "workerMs"):
                            vals = [p[part] for p in parts if p.get(part) is not None]
                            if vals:
                                out[part] = float(np.median(vals))
                        # the next image, its embedding prefetched while this one was open
                        page.key("n")
                        st = page.state()
                        x, y = _points(scenes[1], 1)[0]
                        st2 = page.click(x, y)
                        out["open_next_ms"] = st["openMs"]
                        out["first_click_next_image_ms"] = st2["lastClickMs"]
                        page.key("Escape")
                        results[mode] = out
                    print("4000x3000: zoom and pan frames ...", file=sys.stderr)
                    page.open(f"image={big_id}&warmup=0")
                    page.page.mouse.move(800, 500)
                    for i in range(30):
                        page.page.mouse.wheel(0, -120 if i < 15 else 120)
                        page.page.wait_for_timeout(20)
                    page.page.keyboard.down(" ")
                    page.page.mouse.down()
                    for i in range(30):
                        page.page.mouse.move(800 + 10 * i, 500 + 5 * i)
                    page.page.mouse.up()
                    page.page.keyboard.up(" ")
                    page.idle()
                    frames = page.state()["frameTimes"]
                    results["large_image_frame"] = _stats(frames[-60:])
                    context.close()
                    version = browser.version
                finally:
                    browser.close()
        finally:
            project.close()
    results["chromium"] = version
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--clicks", type=int, default=40, help="timed masks per decoder")
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--warmup", type=int, default=150, help="decoder runs in the worker first")
    p.add_argument("--threads", type=int, default=0, help="WASM threads (0: the tool's default)")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args()

    from segany.engine.web import browser_unavailable

    reason = browser_unavailable()
    if reason:
        raise SystemExit(reason)
    load_before = os.getloadavg()[0]
    results = run(args)
    results["load_avg_1m"] = [load_before, os.getloadavg()[0]]
    results["machine"] = {**core_machine(), "chromium": results.pop("chromium")}
    results["config"] = vars(args)
    print("| decoder | click -> mask median | p95 | 2nd click median | first mask, next image |")
    print("|---|---|---|---|---|")
    for mode in ("browser", "server"):
        r = results[mode]
        print(
            f"| {mode} | {r['click']['median_ms']:.1f} ms | {r['click']['p95_ms']:.1f} ms | "
            f"{r['second_click']['median_ms']:.1f} ms | {r['first_click_next_image_ms']:.1f} ms |"
        )
    f = results["large_image_frame"]
    print(
        f"\n4000x3000 image, zoom/pan: frame draw median {f['median_ms']:.1f} ms, p95 "
        f"{f['p95_ms']:.1f} ms ({f['n']} frames)"
    )
    b = results["browser"]
    print(
        f"\nbrowser parts (median): decode {b.get('decodeMs', 0):.1f} ms (worker "
        f"{b.get('workerMs', 0):.1f}), layer {b.get('layerMs', 0):.1f} ms, draw "
        f"{b.get('drawMs', 0):.1f} ms; load avg {results['load_avg_1m']}"
    )
    write_results(args.out, "browser_tool_segany_tiny", results)


if __name__ == "__main__":
    main()
