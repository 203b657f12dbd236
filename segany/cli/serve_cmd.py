"""``segany serve DIR``: the annotation server (:mod:`segany.engine.server`) on uvicorn.

Prints the URL with the access token, like Jupyter: ``--token``, else ``$SEGANY_TOKEN``, else
the token stored in ``DIR/server_token`` (generated on the first run, readable by the owner
only). Binds 127.0.0.1 unless ``--host`` says otherwise. Needs the ``engine`` extra.
"""

from __future__ import annotations

import argparse
import os
import secrets
import socket
from pathlib import Path
from typing import Any

from .common import EXIT_OK, CliError, UsageError, load_model, status

#: The environment variable with the server token.
TOKEN_ENV = "SEGANY_TOKEN"
#: The file in the project folder that keeps the generated token.
TOKEN_FILE = "server_token"


def register(sub: Any) -> None:
    """Add ``segany serve`` to the subparsers ``sub``."""
    p = sub.add_parser(
        "serve",
        help="run the annotation server on a project",
        description=(
            "Serve a project's HTTP API (and the browser tool) with SAM in the loop. Prints "
            "the URL with the access token; every route but /api/health needs the token."
        ),
    )
    p.add_argument("dir", metavar="DIR", help="project folder (segany project init DIR)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000; 0: any free)")
    p.add_argument(
        "--model", metavar="M", default=None, help="model (default: the project's model)"
    )
    p.add_argument("--db", metavar="URL", default=None, help="the project's database URL")
    p.add_argument(
        "--token",
        default=None,
        help=f"access token (default: ${TOKEN_ENV}, else one stored in DIR/{TOKEN_FILE})",
    )
    p.add_argument(
        "--max-upload-mb", type=float, default=64, help="largest image upload in MiB (default 64)"
    )
    p.add_argument(
        "--open", action="store_true", help="open the tool's URL in a web browser, if there is one"
    )
    p.set_defaults(func=cmd_serve, precision="auto", device="cpu")


def server_token(root: Path, given: str | None) -> str:
    """The token: ``given``, else ``$SEGANY_TOKEN``, else ``root/server_token`` (created with
    a random token, mode 0600, when missing)."""
    token = given or os.environ.get(TOKEN_ENV)
    if token:
        return token
    from ..io.files import write_text_atomic

    path = root / TOKEN_FILE
    if path.is_file():
        stored = path.read_text(encoding="utf-8").strip()
        if stored:
            return stored
    token = secrets.token_urlsafe(24)
    write_text_atomic(path, token + "\n", mode=0o600)
    return token


def cmd_serve(args: argparse.Namespace) -> int:
    """``segany serve``: open the project, load the model, print the URL, run uvicorn."""
    try:
        import uvicorn

        from ..engine.server import create_app
        from ..engine.server.embeddings import register_served_model
        from ..engine.store import Project, StoreError
    except ModuleNotFoundError as e:
        raise CliError(
            f"segany serve needs the engine extra ({e.name} is missing): "
            "pip install 'segany[engine]'"
        ) from None
    if args.max_upload_mb <= 0:
        raise UsageError(f"--max-upload-mb must be positive; got {args.max_upload_mb}")
    try:
        project = Project.open(args.dir, db_url=args.db)
    except StoreError as e:
        raise UsageError(str(e)) from e
    with project:
        from ..predictor import SamPredictor

        if args.model is None:
            args.model = project.model
        token = server_token(project.root, args.token)
        app = create_app(
            project,
            predictor_factory=lambda: SamPredictor(load_model(args)),
            token=token,
            max_upload_mb=args.max_upload_mb,
        )
        # the model is loaded (and fingerprinted) on the server's model thread, where all of
        # its torch work runs (see segany.engine.server.embeddings)
        service = app.state.embeddings
        predictor = service.predictor
        version = service.call(register_served_model, project, args.model, predictor.model)
        sock = _bind(args.host, args.port)
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        url = f"http://{shown}:{port}/?token={token}"
        print(url, flush=True)
        if args.open:
            _open_browser(url)
        status(
            f"serving project {project.root} with model version {version.id} "
            f"({version.name}); Ctrl-C stops"
        )
        config = uvicorn.Config(app, log_level="warning", lifespan="on")
        uvicorn.Server(config).run(sockets=[sock])
    return EXIT_OK


def _open_browser(url: str) -> None:
    """Open ``url`` in the user's graphical browser. Without a display (a server, a container)
    nothing is opened: a console browser would take over the terminal the server logs to."""
    import sys
    import webbrowser

    graphical = sys.platform in ("darwin", "win32") or any(
        os.environ.get(v) for v in ("DISPLAY", "WAYLAND_DISPLAY")
    )
    try:
        opened = graphical and webbrowser.open(url)
    except webbrowser.Error:
        opened = False
    if not opened:
        status("no web browser to open here: open the URL above yourself")


def _bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host``:``port`` (bad usage when it cannot be bound)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as e:
        raise UsageError(f"cannot listen on {host}:{port}: {e.strerror or e}") from e
    sock.set_inheritable(True)
    return sock


__all__ = ["TOKEN_ENV", "TOKEN_FILE", "cmd_serve", "register", "server_token"]
