"""The annotation server: a FastAPI app over a :class:`segany.engine.store.Project`.

Every route but ``GET /api/health`` needs ``Authorization: Bearer TOKEN`` (the server token,
or an annotator's token, which makes the requests that annotator's) or the session cookie that
``GET /?token=TOKEN`` sets. Errors are JSON ``{"detail": message}``. Coordinates are pixels of
the original image, x along the width.
"""

from __future__ import annotations

import contextlib
import json
import mimetypes
import secrets
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ...formats import encode_coco_rle
from ...io.onnx_manifest import DECODER_FILE, DECODER_IMAGE_FILE, DECODER_PROMPT_FILE, MANIFEST_NAME
from ..store import InvalidInput, LeaseConflict, NotFound, Project, VersionConflict
from ..store.media import clean_file_name
from ..web.serve import ISOLATION_HEADERS, MIME_TYPES
from ..web.vendor import STATIC_DIR
from .embeddings import EmbeddingService
from .metrics import add_metrics_routes
from .proposals import add_proposal_routes

__all__ = ["COOKIE", "create_app"]

#: The session cookie's name.
COOKIE = "segany_token"
_MIB = 1024 * 1024
#: Slack over the upload limit for the multipart envelope (boundaries, headers).
_ENVELOPE = 64 * 1024
_MASK_FIELDS = {
    "segmentation", "predicted_iou", "stability_score", "point_coords", "crop_box", "prompts",
    "source", "label", "elapsed_ms", "stage",
}  # fmt: skip
_PATCH_FIELDS = {
    "version", "segmentation", "label", "predicted_iou", "stability_score", "point_coords",
    "prompts", "source", "elapsed_ms",
}  # fmt: skip
_PREDICT_FIELDS = {"points", "labels", "box", "mask_input", "multimask"}
_EVENT_FIELDS = {"kind", "image_id", "mask_id", "stage", "elapsed_ms", "payload"}
#: How many images after the one opened the background encoder is asked for.
PREFETCH_AHEAD = 3
#: Default lease length in seconds.
LEASE_TTL_S = 300.0
#: The browser tool's pages (under ``static/app/``), served at these paths.
PAGES = {"/": "index.html", "/metrics": "metrics.html"}
#: The files of the model's ONNX decoder export under /api/model/ (the in-browser decoder).
MODEL_FILES = (MANIFEST_NAME, DECODER_FILE, DECODER_IMAGE_FILE, DECODER_PROMPT_FILE)
#: Swagger UI's files (npm ``swagger-ui-dist``, installed into ``static/vendor/swagger-ui/``).
SWAGGER_DIR = "/static/vendor/swagger-ui"

for _suffix, _mime in MIME_TYPES.items():  # StaticFiles guesses types from the mimetypes table
    mimetypes.add_type(_mime.split(";")[0], _suffix)


class _HTTPError(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def _default_predictor_factory(model: str) -> Callable[[], Any]:
    def make() -> Any:
        from ...build import load_model
        from ...predictor import SamPredictor

        return SamPredictor(load_model(model, device="cpu"))

    return make


class _BodyLimit:
    """ASGI middleware: refuses request bodies over ``limit`` bytes with 413, from the
    Content-Length header or, without one, while the body is being received."""

    def __init__(self, app: Any, limit: int, what: str) -> None:
        self.app = app
        self.limit = limit
        self.what = what

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            await JSONResponse({"detail": self.what}, status_code=413)(scope, receive, send)
            return
        seen = 0

        async def counted() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise _HTTPError(413, self.what)
            return message

        await self.app(scope, counted, send)


def create_app(
    project: Project,
    *,
    predictor_factory: Callable[[], Any] | None = None,
    token: str | None = None,
    max_upload_mb: float = 64,
    prefetch: bool = True,
) -> FastAPI:
    """The server app for an open ``project``.

    Args:
        project: the project (the caller closes it).
        predictor_factory: returns a :class:`segany.SamPredictor`, called once on first use
            (default: the project's model on the CPU).
        token: the server token (default: a random one, in ``app.state.token``).
        max_upload_mb: the largest image upload, in MiB (413 over it).
        prefetch: while the app runs, a background thread encodes the images not yet cached
            and each image as it is added.
    """
    token = token or secrets.token_urlsafe(24)
    max_bytes = int(max_upload_mb * _MIB)
    factory = predictor_factory or _default_predictor_factory(project.model)

    def image_path(image_id: int) -> tuple[str, Path]:
        record = project.get_image(image_id)
        return record.sha256, project.root / record.relpath

    service = EmbeddingService(project.embeddings_dir, factory, image_path)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if prefetch:
            service.start()
            for image in project.list_images():
                if image.status in ("new", "in_progress"):
                    service.enqueue(image.id)
        try:
            yield
        finally:
            service.stop()

    app = FastAPI(
        title="segany annotation server",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.token = token
    app.state.project = project
    app.state.embeddings = service

    # ------------------------------------------------------------------ errors

    def error(status: int, detail: str) -> JSONResponse:
        return JSONResponse({"detail": detail}, status_code=status)

    statuses = {InvalidInput: 422, NotFound: 404, VersionConflict: 409, LeaseConflict: 409}
    for exc_type, code in statuses.items():
        app.add_exception_handler(exc_type, lambda _r, e, code=code: error(code, str(e)))
    app.add_exception_handler(_HTTPError, lambda _r, e: error(e.status, e.detail))

    @app.exception_handler(RequestValidationError)
    async def _validation(_r: Request, e: RequestValidationError) -> JSONResponse:
        parts = [
            f"{'.'.join(str(x) for x in err.get('loc', ()))}: {err.get('msg')}"
            for err in e.errors()
        ]
        return error(422, "invalid request: " + "; ".join(parts))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_r: Request, e: StarletteHTTPException) -> JSONResponse:
        return error(e.status_code, str(e.detail))

    # ------------------------------------------------------------------ auth

    def who(candidate: str | None) -> tuple[bool, str | None]:
        """(valid, annotator name or None for the server token)."""
        if not candidate:
            return False, None
        if secrets.compare_digest(candidate.encode(), token.encode()):
            return True, None
        annotator = project.annotator_for_token(candidate)
        return (annotator is not None), (annotator.name if annotator else None)

    # inside the auth middleware (added later, so outside): its receive is the route's own
    app.add_middleware(
        _BodyLimit,
        limit=max_bytes + _ENVELOPE,
        what=f"the request is too large; allowed: uploads up to {max_upload_mb:g} MiB "
        "(--max-upload-mb)",
    )

    @app.middleware("http")
    async def _auth(request: Request, call_next: Callable) -> Response:
        path = request.url.path
        if path == "/api/health" or (path == "/" and "token" in request.query_params):
            return await call_next(request)
        header = request.headers.get("authorization", "")
        candidate = header[7:].strip() if header.lower().startswith("bearer ") else None
        if candidate is None:
            candidate = request.cookies.get(COOKIE)
        ok, name = who(candidate)
        if not ok:
            what = "a wrong token" if candidate else "no token"
            message = (
                f"authentication required ({what} given): send 'Authorization: Bearer TOKEN' "
                "with the server's or an annotator's token, or open the URL the server printed"
            )
            if path in PAGES or path == "/docs":
                return HTMLResponse(_login_page(message), status_code=401)
            return error(401, message)
        request.state.annotator = name
        return await call_next(request)

    # outermost: every response (errors included) is cross-origin isolated, so the tool's
    # page gets SharedArrayBuffer and ONNX Runtime Web its WASM threads
    @app.middleware("http")
    async def _isolation(request: Request, call_next: Callable) -> Response:
        response = await call_next(request)
        for name, value in ISOLATION_HEADERS.items():
            if name == "Cache-Control" and request.url.path.startswith("/static/"):
                value = "no-cache"  # revalidated (ETag), not downloaded again
            response.headers.setdefault(name, value)
        return response

    async def json_body(request: Request, allowed: set[str]) -> dict[str, Any]:
        raw = await request.body()
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise _HTTPError(422, f"the request body is not valid JSON ({e})") from None
        if not isinstance(body, dict):
            raise _HTTPError(422, "the request body must be a JSON object")
        unknown = sorted(set(body) - allowed)
        if unknown:
            raise _HTTPError(
                422, f"unknown fields {unknown}; allowed: {', '.join(sorted(allowed))}"
            )
        return body

    # ------------------------------------------------------------------ routes

    @app.get("/", response_class=HTMLResponse)
    def index(request: Request) -> Response:
        given = request.query_params.get("token")
        if given is not None:
            ok, _ = who(given)
            if not ok:
                return HTMLResponse(
                    _login_page("wrong token in the URL: use the URL the server printed"),
                    status_code=401,
                )
            response = RedirectResponse("/", status_code=303)
            response.set_cookie(COOKIE, given, httponly=True, samesite="strict")
            return response
        return page("/")

    @app.get("/metrics", response_class=HTMLResponse)
    def metrics_page() -> Response:
        return page("/metrics")

    def page(path: str) -> Response:
        file = STATIC_DIR / "app" / PAGES[path]
        if not file.is_file():
            raise _HTTPError(404, f"the browser tool is not installed ({file} is missing)")
        return FileResponse(file, media_type="text/html; charset=utf-8")

    @app.get("/docs", response_class=HTMLResponse)
    def docs() -> Response:
        return get_swagger_ui_html(
            openapi_url="/api/openapi.json",
            title="segany annotation server API",
            swagger_js_url=f"{SWAGGER_DIR}/swagger-ui-bundle.js",
            swagger_css_url=f"{SWAGGER_DIR}/swagger-ui.css",
            swagger_favicon_url=f"{SWAGGER_DIR}/favicon-32x32.png",
        )

    @app.get("/api/me")
    def me(request: Request) -> dict[str, Any]:
        """Who the request's token is: an annotator (``annotator`` is the name) or the
        server's owner (``admin`` true; may create annotators)."""
        name = request.state.annotator
        return {"annotator": name, "admin": name is None}

    @app.get("/api/annotators")
    def annotators() -> list[dict[str, Any]]:
        return [{"name": a.name, "created": a.created_at.isoformat()} for a in
                project.list_annotators()]  # fmt: skip

    @app.post("/api/annotators", status_code=201)
    async def add_annotator(request: Request) -> dict[str, Any]:
        """The server's owner adds an annotator: ``{"name"}`` -> ``{"name", "token", "url"}``
        (the token is shown only here)."""
        if request.state.annotator is not None:
            raise _HTTPError(403, "only the server's token may add annotators")
        body = await json_body(request, {"name"})
        if not isinstance(body.get("name"), str):
            raise _HTTPError(422, "name (a string) is required")
        annotator, new_token = await run_in_threadpool(project.add_annotator, body["name"])
        return {"name": annotator.name, "token": new_token, "url": f"/?token={new_token}"}

    @app.get("/api/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/api/openapi.json")
    def openapi() -> dict[str, Any]:
        return app.openapi()

    @app.get("/api/images")
    def list_images() -> list[dict[str, Any]]:
        """The images; ``proposals``: how many prefilled proposals wait for review on each."""
        pending = project.pending_proposals()
        return [
            {**image.to_dict(), "proposals": pending.get(image.id, 0)}
            for image in project.list_images()
        ]

    @app.post("/api/images")
    async def upload(request: Request) -> JSONResponse:
        try:
            form = await request.form(max_files=1, max_fields=10)
        except _HTTPError:
            raise
        except Exception as e:  # noqa: BLE001 - a malformed multipart body
            raise _HTTPError(422, f"expected a multipart form with a 'file' field ({e})") from None
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise _HTTPError(422, "expected a multipart form with the image in a 'file' field")
        data = await upload.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise _HTTPError(
                413, f"the file is over the upload limit; allowed: up to {max_upload_mb:g} MiB"
            )
        name = clean_file_name(upload.filename or "")
        try:
            record, created = await run_in_threadpool(project.add_image_bytes, data, name)
        except InvalidInput as e:
            raise _HTTPError(415, str(e)) from None
        if created and prefetch:
            service.enqueue(record.id)
        return JSONResponse(record.to_dict(), status_code=201 if created else 200)

    @app.get("/api/images/{image_id}")
    def get_image(image_id: int) -> dict[str, Any]:
        record = project.get_image(image_id)
        if prefetch:  # encode the next images ahead of the annotator
            ahead = [
                i.id
                for i in project.list_images()
                if i.id > image_id and i.status in ("new", "in_progress")
            ]
            for next_id in ahead[:PREFETCH_AHEAD]:
                if not service.is_cached(next_id):
                    service.enqueue(next_id)
        return record.to_dict()

    @app.post("/api/images/{image_id}/lease")
    async def lease(image_id: int, request: Request) -> dict[str, Any]:
        body = await json_body(request, {"ttl_s"}) if await request.body() else {}
        annotator = request.state.annotator
        if annotator is None:
            raise _HTTPError(422, "a lease is for an annotator: use an annotator's token")
        ttl = body.get("ttl_s", LEASE_TTL_S)
        record = await run_in_threadpool(project.lease_image, image_id, annotator, ttl)
        return record.to_dict()

    @app.delete("/api/images/{image_id}/lease", status_code=204)
    def release(image_id: int, request: Request) -> Response:
        if request.state.annotator is not None:
            project.release_image(image_id, request.state.annotator)
        return Response(status_code=204)

    @app.post("/api/images/{image_id}/status")
    async def set_status(image_id: int, request: Request) -> dict[str, Any]:
        body = await json_body(request, {"status"})
        if "status" not in body:
            raise _HTTPError(422, "status is required: new, in_progress, done or skipped")
        annotator = request.state.annotator
        record = await run_in_threadpool(
            lambda: project.set_status(image_id, body["status"], annotator=annotator)
        )
        return record.to_dict()

    @app.post("/api/events", status_code=201)
    async def add_event(request: Request) -> dict[str, Any]:
        body = await json_body(request, _EVENT_FIELDS)
        if "kind" not in body:
            raise _HTTPError(422, "kind is required (e.g. undo, redo, discard, open)")
        annotator = request.state.annotator
        kind = body.pop("kind")
        event = await run_in_threadpool(
            lambda: project.record_event(kind, annotator=annotator, **body)
        )
        return {"id": event.id, "kind": event.kind, "at": event.at.isoformat()}

    @app.get("/api/images/{image_id}/file")
    def image_file(image_id: int) -> FileResponse:
        record = project.get_image(image_id)
        return FileResponse(project.root / record.relpath, filename=record.file_name)

    @app.post("/api/images/{image_id}/predict")
    async def predict(image_id: int, request: Request) -> dict[str, Any]:
        body = await json_body(request, _PREDICT_FIELDS)
        return await run_in_threadpool(run_predict, image_id, body, request.state.annotator)

    def run_predict(image_id: int, body: dict[str, Any], annotator: str | None) -> dict:
        record = project.get_image(image_id)
        multimask = body.get("multimask", True)
        if not isinstance(multimask, bool):
            raise _HTTPError(422, f"multimask must be true or false; got {multimask!r}")
        prompt: dict[str, Any] = {"multimask_output": multimask}
        for key, arg in (("points", "point_coords"), ("labels", "point_labels"), ("box", "box")):
            value = body.get(key)
            if value is not None:
                try:
                    prompt[arg] = np.asarray(value, dtype=np.float64)
                except (TypeError, ValueError) as e:
                    raise _HTTPError(422, f"{key} must be numbers ({e})") from None
        if "point_labels" in prompt:
            prompt["point_labels"] = prompt["point_labels"].astype(np.int64)
            if not np.array_equal(prompt["point_labels"], np.asarray(body["labels"], float)):
                raise _HTTPError(422, "labels must be integers: 1 foreground, 0 background")
        token_in = body.get("mask_input")
        if token_in is not None:
            item = service.logits.get(token_in) if isinstance(token_in, str) else None
            if item is None or item[0] != image_id:
                raise _HTTPError(
                    422,
                    "mask_input is not the token of a recent prediction on this image; "
                    "allowed: a 'mask_input' token from this image's last predictions, or null",
                )
            prompt["mask_input"] = item[1]

        def decode() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            try:
                return service.set_image(image_id).predict(**prompt)
            except ValueError as e:
                raise _HTTPError(422, str(e)) from None

        masks, scores, low = service.call(decode)
        tokens = [service.logits.put(image_id, low[i : i + 1]) for i in range(len(scores))]
        rles = encode_coco_rle(np.asarray(masks))
        project.record_event(
            "prompt",
            image_id=record.id,
            annotator=annotator,
            payload={k: body.get(k) for k in ("points", "labels", "box") if _finite(body.get(k))},
        )
        best = int(np.argmax(scores))
        return {
            "masks": [
                {"segmentation": rle, "predicted_iou": float(s), "mask_input": t}
                for rle, s, t in zip(rles, scores, tokens, strict=True)
            ],
            "mask_input": tokens[best],
        }

    @app.get("/api/images/{image_id}/masks")
    def list_masks(image_id: int) -> list[dict[str, Any]]:
        """The masks; prefilled ones (``source: "prefill"``) carry ``review``: ``proposal``
        (waiting for the annotator), ``accepted`` or ``edited``; other masks ``review: null``."""
        masks = project.list_masks(image_id)
        states = project.proposal_states(image_id)
        return [{**m.to_sa1b(), "review": states.get(m.id)} for m in masks]

    @app.post("/api/images/{image_id}/masks")
    async def add_mask(image_id: int, request: Request) -> JSONResponse:
        body = await json_body(request, _MASK_FIELDS)
        if "segmentation" not in body:
            raise _HTTPError(422, "segmentation (a COCO RLE {size, counts}) is required")
        mask = await run_in_threadpool(
            lambda: project.add_mask(
                image_id,
                annotator=request.state.annotator,
                model_version=project.current_model(),
                **body,
            )
        )
        return JSONResponse(mask.to_sa1b(), status_code=201)

    @app.patch("/api/masks/{mask_id}")
    async def update_mask(mask_id: int, request: Request) -> dict[str, Any]:
        body = await json_body(request, _PATCH_FIELDS)
        if "version" not in body:
            raise _HTTPError(422, "version (the version of the mask being edited) is required")
        annotator = request.state.annotator
        record = await run_in_threadpool(
            lambda: project.update_mask(mask_id, annotator=annotator, **body)
        )
        return record.to_sa1b()

    @app.delete("/api/masks/{mask_id}", status_code=204)
    def delete_mask(mask_id: int, request: Request, version: int | None = None) -> Response:
        project.delete_mask(mask_id, version=version, annotator=request.state.annotator)
        return Response(status_code=204)

    @app.get("/api/stats")
    def stats() -> dict[str, Any]:
        out = project.stats()
        out["embeddings"] = service.progress(project)
        return out

    @app.get("/api/images/{image_id}/embedding")
    def embedding(image_id: int, dtype: str = "float32") -> Response:
        if dtype not in ("float32", "float16"):
            raise _HTTPError(422, f"dtype must be float32 or float16; got {dtype!r}")
        project.get_image(image_id)
        features, original, input_size = service.embedding(image_id)
        data = np.ascontiguousarray(features, dtype=np.dtype(dtype).newbyteorder("<"))
        headers = {
            "X-Embedding-Dtype": dtype,
            "X-Embedding-Shape": ",".join(str(n) for n in data.shape),
            "X-Original-Size": f"{original[0]},{original[1]}",
            "X-Input-Size": f"{input_size[0]},{input_size[1]}",
            "X-Model-Fingerprint": service.fingerprint,
        }
        return Response(data.tobytes(), media_type="application/octet-stream", headers=headers)

    @app.get("/api/model")
    def model() -> dict[str, Any]:
        current = project.current_model()
        return {
            "model": project.model,
            "version": None if current is None else current.to_dict(),
            "embedding_fingerprint": service.fingerprint,
            "decoder_url": "/api/model/decoder.onnx",
            "manifest_url": "/api/model/manifest.json",
        }

    @app.get("/api/model/{name}")
    def model_file(name: str) -> FileResponse:
        if name not in MODEL_FILES:
            raise _HTTPError(404, f"no model file {name!r}; allowed: {', '.join(MODEL_FILES)}")
        try:
            folder = service.decoder_dir()
        except ModuleNotFoundError as e:
            raise _HTTPError(503, f"the ONNX export needs {e.name}: pip install onnx") from None
        if not (folder / name).is_file():  # an export made before the file existed
            raise _HTTPError(404, f"this model's ONNX export has no {name}; see {MANIFEST_NAME}")
        media = "application/octet-stream" if name.endswith(".onnx") else "application/json"
        return FileResponse(folder / name, media_type=media)

    add_metrics_routes(app, project)
    add_proposal_routes(app, project, json_body)
    app.mount("/static", StaticFiles(directory=STATIC_DIR, check_dir=False), name="static")
    return app


def _login_page(message: str) -> str:
    """The HTML a browser gets at a page without a valid token."""
    import html

    return (
        "<!doctype html><meta charset=utf-8><title>segany: sign in</title>"
        "<body style='font:16px system-ui;margin:3em'><h1>segany annotation tool</h1>"
        f"<p>{html.escape(message)}.</p><p>Ask the person running <code>segany serve</code> "
        "for your link, or run <code>segany project annotator DIR NAME</code>.</p>"
    )


def _finite(value: Any) -> bool:
    """Whether a prompt value is present and JSON-safe (no NaN) for the event log."""
    if value is None:
        return False
    try:
        return bool(np.all(np.isfinite(np.asarray(value, dtype=np.float64))))
    except (TypeError, ValueError):
        return False
