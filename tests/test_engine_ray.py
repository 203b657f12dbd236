"""`segany engine auto` on a local Ray (2 actors, loopback only): the same bytes as in-process,
an actor killed mid-run, a driver killed mid-run and re-run (nothing duplicated or
half-written), and every socket of the Ray processes on 127.0.0.1.

One Ray session serves the module (starting Ray takes about 9 s); the killed driver runs its
own.
"""

from __future__ import annotations

import contextlib
import importlib.util
import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from segany.data.sample import sample_image
from segany.engine.stages import INDEX_FILE, PRESETS, GeneratorSpec, run_auto

if importlib.util.find_spec("ray") is None:  # not imported here: segany imports it loopback-only
    pytest.skip("needs the 'ray' extra", allow_module_level=True)

#: Seconds each, and a Ray start: ``make test`` runs them, ``make test-fast`` skips them. Every
#: wait below has its own deadline, so the file ends in bounded time (about a minute on 2 idle
#: cores).
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SPEC = GeneratorSpec.from_preset(
    PRESETS["default"],
    model="segany_tiny",
    device="cpu",
    precision="fp32",
    points_per_side=4,
    threads=1,
)
CLI_FAST = ["--preset", "default", "--points-per-side", "4", "--device", "cpu"]
CLI_FAST += ["--precision", "fp32", "--threads", "1", "--quiet"]


def write_images(folder: Path, count: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        image, _ = sample_image(160, 120, seed=i)
        Image.fromarray(image).save(folder / f"img{i:02d}.png")
    return folder


def shard_bytes(out: Path) -> dict[str, bytes]:
    files = sorted(out.glob("sa_*.tar")) + [out / INDEX_FILE]
    return {p.name: p.read_bytes() for p in files}


# ----------------------------------------------------------------------------- processes


def process_tree(root: int) -> list[int]:
    """``root`` and every live descendant of it (from /proc)."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(d.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children.get(pid, [])
    return tree


def _decode(hex_addr: str, family: int) -> tuple[str, int]:
    addr_hex, port_hex = hex_addr.split(":")
    raw = b"".join(bytes.fromhex(addr_hex[i : i + 8])[::-1] for i in range(0, len(addr_hex), 8))
    return socket.inet_ntop(family, raw), int(port_hex, 16)


def inet_sockets(pids: list[int]) -> list[tuple[int, str, tuple, tuple]]:
    """(pid, protocol, local (addr, port), remote (addr, port)) of every TCP and UDP socket the
    processes ``pids`` hold open, from /proc/PID/fd and /proc/net/{tcp,tcp6,udp,udp6}."""
    owner = {}
    for pid in pids:
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                owner[target[8:-1]] = pid
    found = []
    for table, family in (
        ("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6),
        ("udp", socket.AF_INET), ("udp6", socket.AF_INET6),
    ):  # fmt: skip
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in owner:
                local, remote = _decode(fields[1], family), _decode(fields[2], family)
                found.append((owner[fields[9]], table, local, remote))
    return found


def _loopback(addr: str) -> bool:
    ip = ipaddress.ip_address(addr)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip) == "127.0.0.1"


def assert_loopback_only(pids: list[int]) -> int:
    """Every socket of ``pids`` is bound to 127.0.0.1 and connected, if at all, to 127.0.0.1;
    returns how many sockets were checked."""
    sockets = inet_sockets(pids)
    bad = [
        s for s in sockets if not _loopback(s[2][0]) or (s[3][1] != 0 and not _loopback(s[3][0]))
    ]
    assert not bad, f"Ray sockets off loopback (pid, proto, local, remote): {bad}"
    return len(sockets)


# ----------------------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def ray_local():
    """One local loopback Ray for the module, as segany starts it."""
    from segany.engine.stages.ray_run import ray_session

    with ray_session(None, num_cpus=2) as ray:
        yield ray
    assert not ray.is_initialized()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Input images and the in-process output, shard size 2."""
    base = tmp_path_factory.mktemp("ray")
    images = write_images(base / "images", 6)
    run_auto(images, base / "ref", spec=SPEC, shard_size=2, progress=False)
    return images, base / "ref"


def _kill_one_actor(stop: threading.Event, killed: list[int]) -> None:
    """Once a generator actor has started, SIGKILL it (once)."""
    deadline = time.monotonic() + 60
    while not stop.is_set() and time.monotonic() < deadline:
        for pid in process_tree(os.getpid()):
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"_GeneratorActor" in cmd:
                time.sleep(1.0)  # let it take an image
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
        time.sleep(0.2)


def test_two_workers_give_the_in_process_bytes_on_loopback(ray_local, reference, tmp_path):
    images, ref = reference
    out = tmp_path / "out"
    report = run_auto(images, out, spec=SPEC, shard_size=2, workers=2, progress=False)
    assert report["mode"] == "ray" and report["workers"] == 2 and report["done"] == 6
    assert shard_bytes(out) == shard_bytes(ref)
    tree = process_tree(os.getpid())
    assert len(tree) > 3  # the GCS, the raylet and workers are running
    assert assert_loopback_only(tree) > 3  # they do hold sockets, all on loopback
    assert ray_local.is_initialized()  # a caller's session is left running


def test_an_actor_killed_mid_run(ray_local, reference, tmp_path):
    images, ref = reference
    out = tmp_path / "out"
    stop, killed = threading.Event(), []
    killer = threading.Thread(target=_kill_one_actor, args=(stop, killed))
    killer.start()
    try:
        run_auto(images, out, spec=SPEC, shard_size=2, workers=2, progress=False)
    except Exception:  # Ray gave up on the run: the re-run must finish it
        pass
    finally:
        stop.set()
        killer.join()
    assert killed, "no generator actor was found to kill"
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    report = run_auto(images, out, spec=SPEC, shard_size=2, workers=2, progress=False)
    assert report["done"] + report["skipped"] == 6
    assert shard_bytes(out) == shard_bytes(ref)


def test_driver_killed_mid_run_then_rerun(ray_local, reference, tmp_path):
    images, ref = reference
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    argv = [sys.executable, "-m", "segany", "engine", "auto", str(images), "--out", str(out)]
    argv += ["--shard-size", "2", "--workers", "2", *CLI_FAST]
    log = (tmp_path / "driver.log").open("wb")
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=log, start_new_session=True)
    tree: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            index = out / INDEX_FILE
            if index.exists() and json.loads(index.read_text())["shards"]:
                break
            time.sleep(0.2)
        assert proc.poll() is None, (tmp_path / "driver.log").read_text()
        tree = process_tree(proc.pid)
        assert len(tree) > 3 and assert_loopback_only(tree) > 3
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray it started
        proc.wait(timeout=30)
        for pid in tree:  # anything of that Ray that left the process group
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        log.close()
    done = json.loads((out / INDEX_FILE).read_text())["shards"]
    assert len(done) >= 1  # killed while running: at least one shard finished before
    report = run_auto(images, out, spec=SPEC, shard_size=2, workers=2, progress=False)
    assert report["skipped"] == 2 * len(done) and report["done"] == 6 - 2 * len(done)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    assert shard_bytes(out) == shard_bytes(ref)
    names = [
        im["name"]
        for s in json.loads((out / INDEX_FILE).read_text())["shards"]
        for im in s["images"]
    ]
    assert len(names) == len(set(names)) == 6
