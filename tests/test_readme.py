"""The README's quick start runs as written: its Python block on the bundled model and a
generated image, and every ``segany`` command of its shell block parses (no network)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segany.cli.main import build_parser, main
from segany.data.sample import sample_image

pytestmark = pytest.mark.usefixtures("one_thread")

README = Path(__file__).resolve().parent.parent / "README.md"
QUICK_START = "## Quick start"
OFFICIAL_MODEL = "vit_b"  # what the quick start uses; the test substitutes the bundled model
BUNDLED_MODEL = "segany_tiny"
PHOTO = "photo.jpg"


def quick_start_blocks(language: str) -> list[str]:
    """The fenced ``language`` code blocks of the README's quick-start section (from its
    heading to the next ``## `` heading). Fails if the section or a block is missing."""
    text = README.read_text(encoding="utf-8")
    start = text.find(f"\n{QUICK_START}\n")
    assert start >= 0, f"README.md has no {QUICK_START!r} heading"
    end = text.find("\n## ", start + 1)
    section = text[start : end if end >= 0 else len(text)]
    blocks = re.findall(rf"^```{language}\n(.*?)^```$", section, flags=re.S | re.M)
    assert blocks, f"README.md's {QUICK_START!r} section has no ```{language} block"
    return blocks


def segany_commands() -> list[list[str]]:
    """The argument lists of the ``segany ...`` lines of the quick start's shell blocks."""
    commands = [
        shlex.split(line, comments=True)[1:]
        for block in quick_start_blocks("bash")
        for line in block.splitlines()
        if line.strip().startswith("segany ")
    ]
    assert commands, "the quick start's ```bash block has no 'segany ...' command"
    return commands


def write_photo(folder: Path) -> tuple[int, int]:
    """Write the generated sample scene as ``folder/photo.jpg``; returns its (H, W)."""
    image, _ = sample_image()
    Image.fromarray(image).save(folder / PHOTO)
    return image.shape[:2]


def test_python_quick_start_runs_on_the_bundled_model(tmp_path, monkeypatch):
    (code,) = quick_start_blocks("python")
    assert PHOTO in code and f'"{OFFICIAL_MODEL}"' in code, "the quick start changed its inputs"
    code = code.replace(f'"{OFFICIAL_MODEL}"', f'"{BUNDLED_MODEL}"')
    monkeypatch.chdir(tmp_path)
    h, w = write_photo(tmp_path)

    namespace: dict = {}
    exec(compile(code, f"{README.name} quick start", "exec"), namespace)

    masks, scores, best = namespace["masks"], namespace["scores"], namespace["best"]
    assert masks.shape == (3, h, w) and masks.dtype == bool  # one point: three masks
    assert scores.shape == (3,) and np.isfinite(scores).all()
    assert best.shape == (h, w) and best.dtype == bool
    saved = sorted(p.name for p in tmp_path.glob("*.png"))
    assert saved, "the quick start saved no mask"
    for name in saved:
        assert np.array_equal(np.array(Image.open(tmp_path / name)).astype(bool), best)


def test_cli_quick_start_commands_parse():
    parser = build_parser()
    for argv in segany_commands():
        args = parser.parse_args(argv)
        assert args.command == argv[0]


def test_cli_quick_start_segment_runs_on_the_bundled_model(tmp_path, monkeypatch, capsys):
    (argv,) = [a for a in segany_commands() if a[0] == "segment"]
    assert OFFICIAL_MODEL in argv
    monkeypatch.chdir(tmp_path)
    write_photo(tmp_path)

    assert main([BUNDLED_MODEL if a == OFFICIAL_MODEL else a for a in argv]) == 0

    out = tmp_path / "segany_out"  # the default --out, as the README's comment says
    assert (out / "overlay.png").is_file() and (out / "scores.json").is_file()
    written = sorted(p.name for p in out.glob("mask_*.png"))
    assert written == [f"mask_{i}.png" for i in range(3)]  # one point: three masks
    assert capsys.readouterr().out.count("score") == 3
