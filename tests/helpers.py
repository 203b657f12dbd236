"""Helpers shared by the tests (imported as ``tests.helpers``; tests import no other test
module): the tiny test config, random-weight model pairs (official package vs segany with equal
weights), a structured random image, the ONNX Runtime vs PyTorch comparisons, and a throwaway PostgreSQL
server (:class:`PostgresServer`)."""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import segany
from segany.config import ImageEncoderConfig, MaskDecoderConfig, PromptEncoderConfig, SamConfig

TINY = SamConfig(
    name="tiny",
    image_encoder=ImageEncoderConfig(
        img_size=128,
        patch_size=8,
        embed_dim=64,
        depth=3,
        num_heads=4,
        window_size=5,  # 16x16 grid is not a multiple of 5: exercises window padding
        global_attn_indexes=(1,),
    ),
    prompt_embed_dim=32,
    prompt_encoder=PromptEncoderConfig(mask_in_chans=8),
    mask_decoder=MaskDecoderConfig(transformer_mlp_dim=64, iou_head_hidden_dim=48),
)


def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every parameter non-trivial random values (official init leaves rel-pos and
    pos_embed at zero, which would hide bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm1.weight") or ".norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif p.dim() > 1:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) / max(fan_in, 1) ** 0.5)
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return model


def official_from_config(cfg: SamConfig):
    """Build the official ``segment_anything`` model with the same architecture."""
    from functools import partial

    from segment_anything.modeling import (
        ImageEncoderViT,
        MaskDecoder,
        PromptEncoder,
        Sam,
        TwoWayTransformer,
    )

    e, d = cfg.image_encoder, cfg.mask_decoder
    grid = e.img_size // e.patch_size
    return Sam(
        image_encoder=ImageEncoderViT(
            img_size=e.img_size,
            patch_size=e.patch_size,
            embed_dim=e.embed_dim,
            depth=e.depth,
            num_heads=e.num_heads,
            mlp_ratio=e.mlp_ratio,
            out_chans=cfg.prompt_embed_dim,
            qkv_bias=e.qkv_bias,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            use_rel_pos=e.use_rel_pos,
            window_size=e.window_size,
            global_attn_indexes=list(e.global_attn_indexes),
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=cfg.prompt_embed_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(e.img_size, e.img_size),
            mask_in_chans=cfg.prompt_encoder.mask_in_chans,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=d.num_multimask_outputs,
            transformer=TwoWayTransformer(
                depth=d.transformer_depth,
                embedding_dim=cfg.prompt_embed_dim,
                mlp_dim=d.transformer_mlp_dim,
                num_heads=d.transformer_num_heads,
            ),
            transformer_dim=cfg.prompt_embed_dim,
            iou_head_depth=d.iou_head_depth,
            iou_head_hidden_dim=d.iou_head_hidden_dim,
        ),
        pixel_mean=list(cfg.pixel_mean),
        pixel_std=list(cfg.pixel_std),
    ).eval()


def make_pair(cfg: SamConfig, seed: int = 0):
    """(official model, segany fp32 model) with identical random weights."""
    torch.manual_seed(seed)
    official = randomize_(official_from_config(cfg), seed)
    ours = segany.build_sam_model(cfg).eval()
    ours.load_state_dict(official.state_dict(), strict=True)
    return official, ours


def make_amg_pair(cfg: SamConfig = None, seed: int = 0, gain: float = 30.0):
    """Model pair whose masks are image-dependent regions with decisive logits (random weights
    otherwise give near-constant masks): the hypernetwork outputs are centred over channels
    and scaled by ``gain``, identically in both models."""
    official, ours = make_pair(cfg or TINY, seed)
    sd = official.state_dict()
    for k in sd:
        if k.startswith("mask_decoder.output_hypernetworks_mlps.") and ".layers.2." in k:
            # zero-mean over the output channels removes the common mode of the upscaled
            # features, so logits follow image content; the gain makes them decisive
            w = sd[k] - sd[k].mean(0, keepdim=True)
            sd[k] = w * gain
    official.load_state_dict(sd)
    ours.load_state_dict(sd)
    return official, ours


def random_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smooth random RGB image with some structure (uint8, (H, W, 3))."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.zeros((h, w, 3), np.float64)
    for c in range(3):
        for _ in range(3):
            fx, fy, ph = rng.uniform(0.005, 0.05), rng.uniform(0.005, 0.05), rng.uniform(0, 6)
            img[..., c] += np.sin(xx * fx + yy * fy + ph)
    img += rng.normal(0, 0.2, img.shape)
    img = (img - img.min()) / (img.max() - img.min()) * 255
    return img.astype(np.uint8)


# ---------------------------------------------------------------------------- ONNX Runtime

IOU_TOL = 1e-3  # ONNX Runtime vs PyTorch, fp32
LOGIT_BAND = 1e-2  # mask pixels may differ only where |logit| is below this


def assert_masks_match(logits: np.ndarray, ref_logits: np.ndarray) -> None:
    """Masks equal except on pixels whose reference logit is within LOGIT_BAND of 0."""
    assert logits.shape == ref_logits.shape
    differ = (logits > 0) != (ref_logits > 0)
    bad = differ & (np.abs(ref_logits) > LOGIT_BAND)
    assert not bad.any(), f"{int(bad.sum())} mask pixels differ away from the threshold"


def assert_same_prediction(a, b) -> None:
    """(masks-as-logits, scores, low_res) of two predictors agree."""
    np.testing.assert_allclose(a[1], b[1], atol=IOU_TOL, rtol=0)
    np.testing.assert_allclose(a[2], b[2], atol=1e-3, rtol=1e-3)
    assert_masks_match(a[0], b[0])


def prompt_suite(h: int, w: int) -> list[dict]:
    """1 point, 3 points, a box, points + box, and (filled in by the caller) a mask input."""
    rng = np.random.default_rng(h + w)
    pts = rng.uniform([0, 0], [w, h], size=(3, 2))
    box = np.array([w * 0.1, h * 0.2, w * 0.7, h * 0.9])
    return [
        {"point_coords": pts[:1], "point_labels": np.array([1])},
        {"point_coords": pts, "point_labels": np.array([1, 0, 1])},
        {"box": box},
        {"point_coords": pts[:2], "point_labels": np.array([1, 0]), "box": box},
    ]


def run_suite(ours, ref, h: int, w: int) -> None:
    """Every prompt of :func:`prompt_suite`, with and without a mask input fed back, multimask
    on and off: ``ours`` (OnnxPredictor) agrees with ``ref`` (SamPredictor)."""
    for prompt in prompt_suite(h, w):
        for multimask in (True, False):
            a = ours.predict(**prompt, multimask_output=multimask, return_logits=True)
            b = ref.predict(**prompt, multimask_output=multimask, return_logits=True)
            assert a[0].shape == (3 if multimask else 1, h, w)
            assert_same_prediction(a, b)
            fed = {**prompt, "mask_input": b[2][:1]}
            assert_same_prediction(
                ours.predict(**fed, multimask_output=multimask, return_logits=True),
                ref.predict(**fed, multimask_output=multimask, return_logits=True),
            )
    # a mask input alone (no sparse prompt: zero points in the decoder)
    low = ref.predict(**prompt_suite(h, w)[0], multimask_output=False)[2]
    assert_same_prediction(
        ours.predict(mask_input=low, return_logits=True),
        ref.predict(mask_input=low, return_logits=True),
    )


def quiet_options():
    """Session options without thread spinning: these tests alternate ONNX Runtime and torch
    calls on a small shared CPU, where spinning pools slow each other down."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


def onnx_predictor(path: Path, **kwargs):
    """An OnnxPredictor on the export in ``path`` with :func:`quiet_options`."""
    from segany.runtime import OnnxPredictor

    return OnnxPredictor(path, session_options=quiet_options(), **kwargs)


# ---------------------------------------------------------------------------- PostgreSQL

PG_DIR_PREFIX = "segany-pg-"  # the throwaway clusters' folders under /tmp
PG_INSTALL_HINT = (
    "PostgreSQL's server binaries (initdb, pg_ctl) were not found under "
    "/usr/lib/postgresql/*/bin or $SEGANY_PG_BIN; install them with "
    "`bash scripts/install-system-deps.sh` (Debian's postgresql package)"
)
_DB_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def find_postgres_bin() -> Path | None:
    """The newest PostgreSQL server bin folder: ``$SEGANY_PG_BIN`` if set, else the highest
    version under ``/usr/lib/postgresql/*/bin`` (Debian's layout), else the folder of an
    ``initdb`` on ``PATH``; ``None`` when there is none with both ``initdb`` and ``pg_ctl``."""

    def ok(d: Path) -> bool:
        return (d / "initdb").is_file() and (d / "pg_ctl").is_file()

    if os.environ.get("SEGANY_PG_BIN"):
        d = Path(os.environ["SEGANY_PG_BIN"])
        return d if ok(d) else None

    def version(d: Path) -> tuple[int, ...]:
        return tuple(int(p) for p in re.findall(r"\d+", d.parent.name)) or (0,)

    found = sorted((d for d in Path("/usr/lib/postgresql").glob("*/bin") if ok(d)), key=version)
    if found:
        return found[-1]
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path and ok(Path(on_path).parent) else None


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
    return not re.search(r"^State:\s+[ZX]", status, re.M)


def listening_tcp_sockets(pid: int) -> list[tuple[str, int]]:
    """(address, port) of every TCP socket in state LISTEN that process ``pid`` holds open,
    read from ``/proc/PID/fd`` and ``/proc/net/tcp{,6}`` (Linux)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        path = Path(f"/proc/net/{table}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != "0A" or inode not in inodes:  # 0A: TCP_LISTEN
                continue
            addr_hex, port_hex = local.split(":")
            # the kernel prints each 32-bit word of the address in host (little-endian) order
            raw = b"".join(
                bytes.fromhex(addr_hex[i : i + 8])[::-1] for i in range(0, len(addr_hex), 8)
            )
            found.append((socket.inet_ntop(family, raw), int(port_hex, 16)))
    return found


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that was free a moment ago (the OS's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_accepts(port: int, host: str = "127.0.0.1", timeout: float = 2.0) -> bool:
    """Whether a TCP connection to ``host:port`` succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _postmaster_pid(data: Path) -> int | None:
    try:
        return int((data / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None


def _kill_postmaster(data: Path) -> None:
    """Stop the postmaster of ``data`` without pg_ctl: SIGQUIT (immediate shutdown), then
    SIGKILL after 10 s. Only a process whose command line names ``data`` is signalled."""
    pid = _postmaster_pid(data)
    if pid is None or not pid_alive(pid):
        return
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return
    if str(data) not in cmdline:  # a reused pid: not ours
        return
    for sig, wait in ((signal.SIGQUIT, 10.0), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not pid_alive(pid):
            return


def reap_stale_postgres(root: Path = Path("/tmp")) -> None:
    """Stop and remove the throwaway clusters of test runs that died without cleaning up
    (their folder's ``owner.pid`` names a process that no longer exists)."""
    for d in root.glob(PG_DIR_PREFIX + "*"):
        try:
            owner = int((d / "owner.pid").read_text())
        except (OSError, ValueError):
            continue
        if pid_alive(owner):
            continue
        _kill_postmaster(d / "data")
        shutil.rmtree(d, ignore_errors=True)


class PostgresServer:
    """A throwaway PostgreSQL cluster for tests, as a context manager.

    ``initdb`` makes a cluster (trust authentication, superuser ``user``) in a fresh folder
    ``/tmp/segany-pg-*``; the server listens on TCP ``127.0.0.1:port`` only (a free port) and
    on a Unix socket in that folder. PostgreSQL refuses to run as root: under root the cluster
    is owned by and run as the ``postgres`` user (Debian's package creates it), otherwise as
    the current user. fsync is off (the tests kill clients, not the machine). Leaving the
    context (also on an error, and at interpreter exit if never left) stops the server and
    removes the folder; :func:`reap_stale_postgres` clears what a killed run left behind.

    >>> with PostgresServer() as pg:
    ...     url = pg.create_database("store")  # postgresql+psycopg://test@127.0.0.1:PORT/store
    """

    def __init__(
        self,
        *,
        bin_dir: Path | None = None,
        user: str = "test",
        host: str = "127.0.0.1",
        start_timeout: int = 30,
    ) -> None:
        self.bin_dir = Path(bin_dir) if bin_dir else find_postgres_bin()
        if self.bin_dir is None:
            raise RuntimeError(PG_INSTALL_HINT)
        self.user, self.host, self.start_timeout = user, host, start_timeout
        self.port: int | None = None
        self.dir: Path | None = None
        self._run_as: tuple[int, int] | None = None

    # -- lifecycle
    def __enter__(self) -> PostgresServer:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def data(self) -> Path:
        assert self.dir is not None, "the server is not started"
        return self.dir / "data"

    @property
    def pid(self) -> int | None:
        """The postmaster's process id (``None`` when not running)."""
        return _postmaster_pid(self.data) if self.dir else None

    def start(self) -> None:
        """initdb a new cluster and start it; retried on a fresh port if the port was taken."""
        reap_stale_postgres()
        self._run_as = self._server_user()
        self.dir = Path(tempfile.mkdtemp(prefix=PG_DIR_PREFIX, dir="/tmp"))
        (self.dir / "owner.pid").write_text(str(os.getpid()))
        if self._run_as:
            os.chown(self.dir, *self._run_as)
        atexit.register(self.stop)
        self._pg(
            "initdb", "-D", str(self.data), "-A", "trust", "-U", self.user,
            "-E", "UTF8", "--locale=C", "--no-sync",
        )  # fmt: skip
        for attempt in range(3):
            self.port = free_port(self.host)
            (self.data / "postmaster.pid").unlink(missing_ok=True)  # a stale one blocks start
            opts = (
                f"-k {self.dir} -h {self.host} -p {self.port} -c listen_addresses={self.host} "
                "-c fsync=off -c full_page_writes=off -c synchronous_commit=off"
            )
            try:
                self._pg(
                    "pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.dir / "log"),
                    "-w", "-t", str(self.start_timeout), "start",
                )  # fmt: skip
                break
            except RuntimeError:
                _kill_postmaster(self.data)
                if attempt == 2 or "already in use" not in self._log():
                    raise
        self._check_connect()

    def stop(self) -> None:
        """Stop the server (pg_ctl fast shutdown, then signals) and remove its folder."""
        if self.dir is None:
            return
        atexit.unregister(self.stop)
        if self.pid is not None and pid_alive(self.pid):
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                self._pg("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "30", "stop")
            _kill_postmaster(self.data)
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir = None

    # -- databases
    def url(self, dbname: str = "postgres") -> str:
        """SQLAlchemy URL of database ``dbname`` over TCP on 127.0.0.1."""
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{dbname}"

    def execute(self, sql: str, dbname: str = "postgres") -> list[tuple]:
        """Run ``sql`` (autocommit, as the superuser) and return its rows (``[]`` if none)."""
        import psycopg

        with psycopg.connect(
            host=self.host, port=self.port, user=self.user, dbname=dbname,
            autocommit=True, connect_timeout=10,
        ) as conn:  # fmt: skip
            cur = conn.execute(sql)
            return cur.fetchall() if cur.description else []

    def create_database(self, name: str) -> str:
        """Create the empty database ``name`` (lower-case letters, digits, ``_``; at most 63)
        and return its SQLAlchemy URL."""
        if not _DB_NAME.match(name):
            raise ValueError(f"database name {name!r}: use [a-z_][a-z0-9_]*, at most 63 chars")
        self.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop database ``name``, closing its open connections."""
        if not _DB_NAME.match(name):
            raise ValueError(f"database name {name!r}: use [a-z_][a-z0-9_]*, at most 63 chars")
        self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    # -- internals
    def _server_user(self) -> tuple[int, int] | None:
        """(uid, gid) to run the server as under root; ``None`` when not root."""
        if os.geteuid() != 0:
            return None
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            raise RuntimeError(
                "running as root, and there is no `postgres` user to run PostgreSQL as "
                "(it refuses root); install Debian's postgresql package "
                "(`bash scripts/install-system-deps.sh`) or run the tests as another user"
            ) from None
        return pw.pw_uid, pw.pw_gid

    def _log(self) -> str:
        try:
            return (self.dir / "log").read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def _pg(self, tool: str, *args: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(LC_ALL="C", LANG="C")
        extra = {}
        if self._run_as:
            uid, gid = self._run_as
            extra = dict(user=uid, group=gid, extra_groups=[])
            env["HOME"] = str(self.dir)
        proc = subprocess.run(
            [str(self.bin_dir / tool), *args],
            cwd=self.dir,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=self.start_timeout + 30,
            **extra,
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"{tool} failed (exit {proc.returncode}): {proc.stdout}{proc.stderr}"
                f"\nserver log:\n{self._log()}"
            )

    def _check_connect(self) -> None:
        """One query over TCP: the server accepts connections (bounded by connect_timeout)."""
        deadline = time.monotonic() + self.start_timeout
        while True:
            try:
                self.execute("SELECT 1")
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)


def fast_finetune_toml(max_masks_per_image: int) -> str:
    """A training config (TOML) for fine-tunes of a few steps in tests: decoder only, one image
    per step, two rounds, fp32."""
    return f"""
freeze_image_encoder = true
images_per_step = 1
max_masks_per_image = {max_masks_per_image}
rounds = 2
point_rounds = 1
loss_resolution = "low"
lr = 1e-4
warmup_steps = 1
checkpoint_every = 100
log_every = 1
precision = "fp32"
"""


# ---------------------------------------------------------------------------- the browser tool

BROWSER_TIMEOUT_MS = 120_000  # any one Playwright wait in the browser tool's tests


def bounded(page, expression: str, timeout_ms: int = BROWSER_TIMEOUT_MS):
    """Await a page promise, rejected after ``timeout_ms`` (page.evaluate has no timeout)."""
    return page.evaluate(
        """([expression, ms]) => Promise.race([
            (0, eval)(expression),
            new Promise((_, reject) => setTimeout(
                () => reject(new Error(`${expression} did not settle in ${ms} ms`)), ms)),
        ])""",
        [expression, timeout_ms],
    )


class BrowserTool:
    """The annotation tool in a Playwright browser (``browser`` fixture): one browser context signed in with a token, on the tool's page."""

    def __init__(self, browser, server, token: str, query: str = "warmup=30") -> None:
        self.context = browser.new_context(viewport={"width": 1280, "height": 800})
        self.context.set_default_timeout(BROWSER_TIMEOUT_MS)
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.server = server
        self.page.goto(f"{server['base']}/?token={token}")  # sets the cookie, redirects to /
        self.query = query

    def open(self, image_id: int | None = None, query: str | None = None) -> BrowserTool:
        q = self.query if query is None else query
        if image_id is not None:
            q = f"{q}&image={image_id}" if q else f"image={image_id}"
        self.page.goto(f"{self.server['base']}/?{q}")
        self.page.wait_for_function("window.seganyTool !== undefined")
        bounded(self.page, "window.seganyTool.ready")
        self.idle()
        return self

    def idle(self) -> None:
        bounded(self.page, "window.seganyTool.waitIdle()")

    def state(self) -> dict:
        return self.page.evaluate("window.seganyTool.state()")

    def screen(self, x: float, y: float) -> tuple[float, float]:
        """Page coordinates of image pixel (x, y)."""
        return self.page.evaluate(
            """([x, y]) => {
                const v = window.seganyTool.state().view;
                const r = document.getElementById("view").getBoundingClientRect();
                const dpr = window.devicePixelRatio || 1;
                return [r.left + (x * v.scale + v.tx) / dpr, r.top + (y * v.scale + v.ty) / dpr];
            }""",
            [x, y],
        )

    def click(self, x: float, y: float, **kw) -> None:
        self.page.mouse.click(*self.screen(x, y), **kw)
        self.idle()

    def drag(self, a: tuple[float, float], b: tuple[float, float]) -> None:
        self.page.mouse.move(*self.screen(*a))
        self.page.mouse.down()
        self.page.mouse.move(*self.screen(*b), steps=8)
        self.page.mouse.up()
        self.idle()

    def key(self, key: str) -> None:
        self.page.keyboard.press(key)
        self.idle()

    def working_mask(self) -> np.ndarray:
        from segany.formats import decode_uncompressed_rle

        rle = self.page.evaluate("window.seganyTool.workingMask()")
        return decode_uncompressed_rle(rle)

    def close(self) -> None:
        self.context.close()
