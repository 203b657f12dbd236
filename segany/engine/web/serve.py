"""A small static file server for the decoder's browser tests and benchmarks.

Every response carries ``Cross-Origin-Opener-Policy: same-origin`` and
``Cross-Origin-Embedder-Policy: require-corp`` (so the page is ``crossOriginIsolated`` and ONNX
Runtime Web gets SharedArrayBuffer, hence WASM threads), ``Cross-Origin-Resource-Policy:
same-origin`` and ``Cache-Control: no-store``; ``.mjs``/``.js`` go out as JavaScript and
``.wasm`` as ``application/wasm`` (needed for streaming compilation). It binds 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import threading
import time
from collections.abc import Iterator, Mapping
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

ISOLATION_HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Cache-Control": "no-store",
}

MIME_TYPES = {
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".wasm": "application/wasm",
    ".json": "application/json",
    ".onnx": "application/octet-stream",
    ".bin": "application/octet-stream",
    ".html": "text/html; charset=utf-8",
}


def _handler(routes: Mapping[str, Path | bytes]) -> type[SimpleHTTPRequestHandler]:
    folders = {k.strip("/"): Path(v) for k, v in routes.items() if not isinstance(v, bytes)}
    blobs = {"/" + k.strip("/"): v for k, v in routes.items() if isinstance(v, bytes)}

    class Handler(SimpleHTTPRequestHandler):
        extensions_map = {**SimpleHTTPRequestHandler.extensions_map, **MIME_TYPES}

        def end_headers(self) -> None:
            for name, value in ISOLATION_HEADERS.items():
                self.send_header(name, value)
            super().end_headers()

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

        def do_GET(self) -> None:
            path = unquote(urlsplit(self.path).path)
            if path in blobs:
                data = blobs[path]
                self.send_response(HTTPStatus.OK)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                return
            super().do_GET()

        def translate_path(self, path: str) -> str:
            # Only files under a routed folder; anything else (or any "..") is a 404.
            parts = [p for p in posixpath.normpath(unquote(urlsplit(path).path)).split("/") if p]
            if parts and parts[0] in folders and ".." not in parts:
                target = folders[parts[0]].joinpath(*parts[1:])
                if target.is_file():
                    return str(target)
            return os.devnull + ".missing"

        def list_directory(self, path: str | os.PathLike[str]) -> None:
            self.send_error(HTTPStatus.NOT_FOUND)
            return None

    return Handler


@contextlib.contextmanager
def isolated_server(routes: Mapping[str, Path | bytes]) -> Iterator[str]:
    """Serve ``routes`` on 127.0.0.1 at a free port and yield the base URL (``http://127.0.0.1:P``).

    ``routes`` maps a first path segment to a folder (``{"static": STATIC_DIR}`` serves
    ``/static/<file>``) or an exact path to bytes (``{"emb.bin": data}``). The server thread is
    stopped and the socket closed when the block exits.
    """
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(routes))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@contextlib.contextmanager
def app_server(app: object, *, start_timeout_s: float = 60.0) -> Iterator[str]:
    """Run an ASGI ``app`` (the annotation server) on uvicorn in a thread, on 127.0.0.1 at a
    free port, and yield the base URL; the lifespan runs (startup and shutdown). For tests and
    benchmarks: the server is asked to exit and its thread joined when the block exits."""
    import socket

    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + start_timeout_s
        while not server.started and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        if not server.started:
            raise RuntimeError(f"the app server did not start in {start_timeout_s:g} s")
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
