"""The ``segany`` command line, run in-process through ``main([...])`` on a tiny random model
saved to a temporary checkpoint (no network, no real weights)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import segany
from segany import hub
from segany.cli import main as cli_main
from segany.cli.main import DEFAULT_MODEL, main
from segany.modeling import ImageEncoderViT
from tests.helpers import TINY, random_image, randomize_

H, W = 90, 120
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    ckpt = d / "tiny.pth"
    torch.save(randomize_(segany.build_sam_model(TINY), 0).state_dict(), ckpt)
    img = d / "img.png"
    Image.fromarray(random_image(H, W, seed=3)).save(img)
    other = d / "other.png"
    Image.fromarray(random_image(50, 70, seed=4)).save(other)
    return {"ckpt": ckpt, "img": img, "other": other}


@pytest.fixture
def model_args(files):
    return ["--model", str(files["ckpt"]), "--device", "cpu", "--precision", "fp32"]


def segment(files, model_args, out, *prompts):
    return main(["segment", str(files["img"]), *prompts, "--out", str(out), *model_args])


def read_mask(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.mode == "L"
        return np.asarray(im)


@pytest.fixture
def broken_encoder(monkeypatch):
    """Make any run of the image encoder fail loudly."""

    def forward(self, x):
        raise RuntimeError("image encoder must not run")

    monkeypatch.setattr(ImageEncoderViT, "forward", forward)


# ---------------------------------------------------------------------------- segment


def test_segment_point_writes_three_masks_overlay_and_scores(files, model_args, tmp_path, capsys):
    out = tmp_path / "out"
    assert segment(files, model_args, out, "--point", "30,40") == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["mask_0.png", "mask_1.png", "mask_2.png", "overlay.png", "scores.json"]
    for i in range(3):
        m = read_mask(out / f"mask_{i}.png")
        assert m.shape == (H, W) and set(np.unique(m).tolist()) <= {0, 255}
    with Image.open(out / "overlay.png") as im:
        assert im.size == (W, H) and im.mode == "RGB"
    data = json.loads((out / "scores.json").read_text())
    assert len(data["scores"]) == 3 and all(isinstance(s, float) for s in data["scores"])
    assert (data["width"], data["height"]) == (W, H)
    assert data["points"] == [[30, 40]] and data["point_labels"] == [1]
    assert data["boxes"] == [] and data["multimask"] is True
    assert [e["file"] for e in data["masks"]] == ["mask_0.png", "mask_1.png", "mask_2.png"]
    for e in data["masks"]:  # area recorded matches the PNG
        assert e["area"] == int((read_mask(out / e["file"]) == 255).sum())
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    for line, score in zip(lines, data["scores"], strict=True):
        assert line.startswith("mask_") and f"{score:.4f}" in line


def test_segment_matches_library_prediction(files, model_args, tmp_path):
    out = tmp_path / "out"
    assert segment(files, model_args, out, "--point", "30,40", "--point", "80,20,0") == 0
    model = segany.load_model(files["ckpt"], precision="fp32", device="cpu")
    p = segany.SamPredictor(model)
    p.set_image(random_image(H, W, seed=3))
    masks, scores, _ = p.predict(
        point_coords=[[30, 40], [80, 20]], point_labels=[1, 0], multimask_output=False
    )
    data = json.loads((out / "scores.json").read_text())
    assert data["multimask"] is False and data["point_labels"] == [1, 0]
    np.testing.assert_allclose(data["scores"], scores, rtol=1e-5)
    assert np.array_equal(read_mask(out / "mask_0.png") == 255, masks[0])


def test_segment_two_boxes_writes_per_box_files(files, model_args, tmp_path, capsys):
    out = tmp_path / "out"
    rc = segment(files, model_args, out, "--box", "10,10,60,50", "--box", "50,20,110,80")
    assert rc == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["box0_mask_0.png", "box1_mask_0.png", "overlay.png", "scores.json"]
    data = json.loads((out / "scores.json").read_text())
    assert np.shape(data["scores"]) == (2, 1)
    assert data["boxes"] == [[10, 10, 60, 50], [50, 20, 110, 80]]
    assert [(e["box"], e["index"]) for e in data["masks"]] == [(0, 0), (1, 0)]
    assert len(capsys.readouterr().out.strip().splitlines()) == 2


def test_two_boxes_multimask_overlay_uses_best_mask_of_each(files, model_args, tmp_path):
    out = tmp_path / "out"
    rc = segment(
        files, model_args, out, "--box", "10,10,60,50", "--box", "50,20,110,80", "--multimask"
    )
    assert rc == 0
    assert len(list(out.glob("box*_mask_*.png"))) == 6
    data = json.loads((out / "scores.json").read_text())
    assert np.shape(data["scores"]) == (2, 3)
    best = [int(np.argmax(s)) for s in data["scores"]]
    shown = np.stack([read_mask(out / f"box{b}_mask_{i}.png") == 255 for b, i in enumerate(best)])
    image = np.asarray(Image.open(files["img"]).convert("RGB"))
    expected = segany.viz.overlay_masks(
        image, shown, boxes=np.array(data["boxes"], dtype=np.float64)
    )
    assert np.array_equal(np.asarray(Image.open(out / "overlay.png")), expected)


def test_single_and_multimask_flags_override_default(files, model_args, tmp_path):
    out = tmp_path / "single"
    assert segment(files, model_args, out, "--point", "30,40", "--single") == 0
    assert sorted(p.name for p in out.glob("mask_*.png")) == ["mask_0.png"]
    assert len(json.loads((out / "scores.json").read_text())["scores"]) == 1
    out = tmp_path / "boxmulti"
    assert segment(files, model_args, out, "--box", "10,10,60,50", "--multimask") == 0
    assert len(list(out.glob("mask_*.png"))) == 3
    out = tmp_path / "boxdefault"
    assert segment(files, model_args, out, "--box", "10,10,60,50", "--point", "30,30") == 0
    assert len(list(out.glob("mask_*.png"))) == 1


def test_rerun_removes_stale_mask_files(files, model_args, tmp_path):
    out = tmp_path / "out"
    assert segment(files, model_args, out, "--point", "30,40") == 0
    (out / "notes.txt").write_text("keep me")
    assert segment(files, model_args, out, "--point", "30,40", "--single") == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["mask_0.png", "notes.txt", "overlay.png", "scores.json"]


def test_embedding_is_created_then_reused_without_encoder(files, model_args, tmp_path, monkeypatch):
    emb = tmp_path / "cache" / "img.safetensors"
    out1, out2 = tmp_path / "o1", tmp_path / "o2"
    assert segment(files, model_args, out1, "--point", "30,40", "--embedding", str(emb)) == 0
    assert emb.is_file()

    def forward(self, x):
        raise RuntimeError("image encoder must not run")

    monkeypatch.setattr(ImageEncoderViT, "forward", forward)
    assert segment(files, model_args, out2, "--point", "30,40", "--embedding", str(emb)) == 0
    s1 = json.loads((out1 / "scores.json").read_text())["scores"]
    s2 = json.loads((out2 / "scores.json").read_text())["scores"]
    np.testing.assert_allclose(s2, s1, rtol=1e-6)
    for i in range(3):
        assert np.array_equal(read_mask(out1 / f"mask_{i}.png"), read_mask(out2 / f"mask_{i}.png"))
    # the patch is effective: without the embedding the run fails (unexpected error)
    assert segment(files, model_args, tmp_path / "o3", "--point", "30,40") == 1


def test_embedding_of_another_image_size_is_rejected(files, model_args, tmp_path, capsys):
    emb = tmp_path / "other.safetensors"
    assert main(["embed", str(files["other"]), "--out", str(emb), *model_args]) == 0
    assert capsys.readouterr().out.strip() == str(emb)
    rc = segment(files, model_args, tmp_path / "o", "--point", "30,40", "--embedding", str(emb))
    assert rc == 2
    err = capsys.readouterr().err
    assert "segany: error:" in err and "70x50" in err and f"{W}x{H}" in err


def test_embed_failure_leaves_no_file(files, model_args, tmp_path, broken_encoder):
    emb = tmp_path / "e.safetensors"
    assert main(["embed", str(files["img"]), "--out", str(emb), *model_args]) == 1  # encoder off
    assert not emb.exists()


def test_embed_command_writes_loadable_file(files, model_args, tmp_path):
    emb = tmp_path / "sub" / "e.safetensors"
    assert main(["embed", str(files["img"]), "--out", str(emb), *model_args]) == 0
    model = segany.load_model(files["ckpt"], precision="fp32", device="cpu")
    p = segany.SamPredictor(model)
    p.load_embedding(emb)
    assert p.original_size == (H, W)


# ---------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("point", "needle"),
    [
        ("500,10", "outside the image"),
        ("30,-1", "outside the image"),
        ("1,2,3,4", "X,Y or X,Y,LABEL"),
        ("1", "X,Y or X,Y,LABEL"),
        ("a,b", "numbers"),
        ("10,10,2", "LABEL must be 1"),
        ("nan,3", "finite"),
    ],
)
def test_bad_point_exits_2_with_message(files, model_args, tmp_path, capsys, point, needle):
    rc = segment(files, model_args, tmp_path / "o", f"--point={point}")
    assert rc == 2
    err = capsys.readouterr().err
    assert "segany: error:" in err and needle in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("box", "needle"),
    [("10,10,5,50", "X1 >= X0"), ("1,2,3", "X0,Y0,X1,Y1"), ("0,0,121,10", "outside the image")],
)
def test_bad_box_exits_2(files, model_args, tmp_path, capsys, box, needle):
    assert segment(files, model_args, tmp_path / "o", f"--box={box}") == 2
    assert needle in capsys.readouterr().err


def test_corrupt_embedding_or_bad_out_exits_2(files, model_args, tmp_path, capsys):
    emb = tmp_path / "junk.safetensors"
    emb.write_bytes(b"not a safetensors file")
    rc = segment(files, model_args, tmp_path / "o", "--point", "3,3", "--embedding", str(emb))
    assert rc == 2
    assert "not a segany embedding file" in capsys.readouterr().err
    assert segment(files, model_args, emb, "--point", "3,3") == 2  # --out is a file
    assert "not a folder" in capsys.readouterr().err


def test_no_prompt_exits_2(files, model_args, tmp_path, capsys):
    assert segment(files, model_args, tmp_path / "o") == 2
    assert "at least one prompt" in capsys.readouterr().err


def test_missing_image_exits_2(files, model_args, tmp_path, capsys):
    rc = main(["segment", str(tmp_path / "nope.png"), "--point", "1,1", *model_args])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("segany: error:") and "nope.png" in err and "not found" in err


def test_corrupt_image_exits_2(files, model_args, tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    assert main(["segment", str(bad), "--point", "1,1", *model_args]) == 2
    err = capsys.readouterr().err
    assert "cannot read image" in err and "Traceback" not in err


def test_missing_checkpoint_exits_3(files, tmp_path, capsys):
    rc = main(["segment", str(files["img"]), "--point", "1,1", "--model", str(tmp_path / "x.pth")])
    assert rc == 3
    err = capsys.readouterr().err
    assert "segany: error:" in err and "x.pth" in err and "vit_b" in err


def test_corrupt_checkpoint_exits_3(files, tmp_path, capsys):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"garbage" * 100)
    rc = main(["segment", str(files["img"]), "--point", "1,1", "--model", str(bad)])
    assert rc == 3
    assert "bad.pth" in capsys.readouterr().err


def test_failing_download_exits_3(files, tmp_path, capsys, monkeypatch):
    def fail(variant, **kwargs):
        raise hub.DownloadError(f"Could not download the SAM {variant} checkpoint (offline)")

    monkeypatch.setattr(hub, "download_checkpoint", fail)
    rc = main(["segment", str(files["img"]), "--point", "1,1", "--model", "vit_l"])
    assert rc == 3
    assert "Could not download the SAM vit_l checkpoint (offline)" in capsys.readouterr().err
    assert main(["download", "vit_h", "--root", str(tmp_path)]) == 3
    assert "vit_h" in capsys.readouterr().err


def test_default_model_is_used_when_model_not_given(files, tmp_path, monkeypatch, capsys):
    seen = []

    def fake_load(model, **kwargs):
        seen.append(model)
        raise FileNotFoundError(f"checkpoint not found: {model}")

    monkeypatch.setattr(segany, "load_model", fake_load)
    assert main(["segment", str(files["img"]), "--point", "1,1"]) == 3
    assert seen == [DEFAULT_MODEL] == [cli_main.DEFAULT_MODEL]


def test_bad_device_exits_2(files, tmp_path, capsys):
    rc = segment(
        files, ["--model", str(files["ckpt"]), "--device", "nonsense"], tmp_path, "--point=1,1"
    )
    assert rc == 2
    assert "nonsense" in capsys.readouterr().err


def test_unexpected_error_exits_1_traceback_only_with_debug(
    files, model_args, tmp_path, capsys, monkeypatch, broken_encoder
):
    monkeypatch.delenv("SEGANY_DEBUG", raising=False)
    assert segment(files, model_args, tmp_path / "o", "--point", "30,40") == 1
    err = capsys.readouterr().err
    assert "segany: error: RuntimeError: image encoder must not run" in err
    assert "Traceback" not in err and "SEGANY_DEBUG" in err
    monkeypatch.setenv("SEGANY_DEBUG", "1")
    assert segment(files, model_args, tmp_path / "o", "--point", "30,40") == 1
    assert "Traceback" in capsys.readouterr().err


def test_library_value_error_is_a_bug_exit_1(files, model_args, tmp_path, capsys, monkeypatch):
    """Only bad input is exit code 2: a ValueError from inside the library is a bug."""

    def forward(self, x):
        raise ValueError("a bug in the encoder")

    monkeypatch.setattr(ImageEncoderViT, "forward", forward)
    monkeypatch.delenv("SEGANY_DEBUG", raising=False)
    assert segment(files, model_args, tmp_path / "o", "--point", "30,40") == 1
    err = capsys.readouterr().err
    assert "segany: error: ValueError: a bug in the encoder" in err
    assert "set SEGANY_DEBUG=1 to see the traceback" in err and "Traceback" not in err


def test_usage_errors_exit_2(capsys):
    assert main([]) == 2
    assert main(["frobnicate"]) == 2
    assert main(["segment"]) == 2  # IMAGE missing
    assert main(["download", "vit_z"]) == 2
    assert main(["segment", "x.png", "--point", "1,1", "--precision", "fp8"]) == 2
    assert "segany: error:" in capsys.readouterr().err


# ---------------------------------------------------------------------------- download / info


def test_download_prints_path(tmp_path, capsys, monkeypatch):
    calls = []

    def fake(variant, *, root=None, **kwargs):
        calls.append((variant, root))
        return Path(root) / hub.CHECKPOINTS[variant].filename

    monkeypatch.setattr(hub, "download_checkpoint", fake)
    assert main(["download", "vit_b", "--root", str(tmp_path)]) == 0
    assert calls == [("vit_b", tmp_path)]
    assert capsys.readouterr().out.strip() == str(tmp_path / "sam_vit_b_01ec64.pth")


def test_info(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SEGANY_HOME", str(tmp_path))
    (tmp_path / hub.CHECKPOINTS["vit_l"].filename).write_bytes(b"short")
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"segany {segany.__version__}" in out and f"torch {torch.__version__}" in out
    assert "precision auto:" in out and "default device:" in out
    assert str(tmp_path) in out
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  vit_")}
    assert "not downloaded" in lines["vit_b"] and "incomplete" in lines["vit_l"]


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"segany {segany.__version__}"


# ---------------------------------------------------------------------------- help


HELP_FLAGS = {
    None: ["--version", "segment", "embed", "download", "info"],
    "segment": [
        "IMAGE",
        "--point",
        "--box",
        "--multimask",
        "--single",
        "--out",
        "--model",
        "--device",
        "--precision",
        "--embedding",
    ],
    "embed": ["IMAGE", "--out", "--model", "--device", "--precision"],
    "download": ["VARIANT", "--root"],
    "info": [],
}


@pytest.mark.parametrize("command", list(HELP_FLAGS))
def test_help_mentions_every_flag(command, capsys):
    argv = ["--help"] if command is None else [command, "--help"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: segany")
    for flag in HELP_FLAGS[command]:
        assert flag in out, f"{flag} missing from {argv} help"


def test_every_option_has_help_text():
    parser = cli_main.build_parser()
    subs = next(a for a in parser._actions if a.dest == "command").choices
    for name, sub in [("segany", parser), *subs.items()]:
        for action in sub._actions:
            assert action.help, f"{name} {action.option_strings or action.dest} has no help"


def test_python_m_segany_cli_help():
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    )
    proc = subprocess.run(
        [sys.executable, "-m", "segany.cli", "--help"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: segany") and "segment" in proc.stdout


def test_demo_runs_end_to_end(tmp_path):
    """`segany demo` (the README's main job) on a tiny checkpoint: sample image, a point
    prompt with 3 masks and a box prompt, overlays, one model load and a reused embedding."""
    import torch

    import segany
    from segany.cli.main import main
    from tests.helpers import TINY, randomize_

    ckpt = tmp_path / "tiny.pth"
    torch.save(randomize_(segany.build_sam_model(TINY), 0).state_dict(), ckpt)
    out = tmp_path / "demo"
    assert main(["demo", "--model", str(ckpt), "--out", str(out)]) == 0
    assert (out / "sample.png").is_file()
    assert sorted(p.name for p in (out / "point").glob("mask_*.png")) == [
        "mask_0.png",
        "mask_1.png",
        "mask_2.png",
    ]
    assert (out / "box" / "overlay.png").is_file() and (out / "box" / "mask_0.png").is_file()
    assert (out / "sample.embedding.safetensors").is_file()


# ---------------------------------------------------------------------------- eval / train input


def test_eval_unreadable_sample_exits_2_and_an_evaluation_bug_exits_1(
    files, model_args, tmp_path, capsys, monkeypatch
):
    data = tmp_path / "sa1b"
    data.mkdir()
    Image.fromarray(random_image(20, 30, seed=5)).save(data / "x.png")
    (data / "x.json").write_text("{ not json")
    assert main(["eval", str(data), "--quiet", *model_args]) == 2
    err = capsys.readouterr().err
    assert "segany: error:" in err and "x.json" in err and "SEGANY_DEBUG" not in err

    import segany.eval.interactive

    def bug(*args, **kwargs):
        raise ValueError("a bug in the evaluation")

    monkeypatch.setattr(segany.eval.interactive, "evaluate_interactive", bug)
    assert main(["eval", "procedural:1", "--quiet", *model_args]) == 1
    assert "ValueError: a bug in the evaluation" in capsys.readouterr().err


def test_train_bad_data_or_device_exits_2_and_a_training_bug_exits_1(tmp_path, capsys, monkeypatch):
    import segany.train

    def config(data: str) -> str:
        path = tmp_path / "c.json"
        path.write_text(json.dumps({"data": [data], "steps": 1, "out_dir": str(tmp_path / "r")}))
        return str(path)

    assert main(["train", config(str(tmp_path / "nope")), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "segany: error: dataset not found" in err and "nope" in err
    assert main(["train", config("procedural:2"), "--device", "nonsense"]) == 2
    assert "invalid device 'nonsense'" in capsys.readouterr().err

    def bug(*args, **kwargs):
        raise ValueError("a bug in training")

    monkeypatch.setattr(segany.train, "train", bug)
    assert main(["train", config("procedural:2"), "--device", "cpu"]) == 1
    assert "ValueError: a bug in training (set SEGANY_DEBUG=1" in capsys.readouterr().err


# ---------------------------------------------------------------------------- layout


def test_cli_modules_import_no_circle():
    """common imports no command module; a command imports common and library code, never main
    or another command (the demo uses segment's and auto's functions); main imports them all."""
    import ast

    cli = REPO / "segany" / "cli"
    modules = {p.stem for p in cli.glob("*.py")}
    deps = {}
    for path in cli.glob("*.py"):
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level == 1:
                found |= {node.module} if node.module else {a.name for a in node.names}
            elif node.level == 0 and (node.module or "").startswith("segany.cli"):
                found |= {node.module.split(".")[2]} if node.module.count(".") >= 2 else set()
                found |= {a.name for a in node.names}
        deps[path.stem] = found & modules
    commands = {m for m in modules if m.endswith("_cmd")}
    assert len(commands) == 15
    assert deps["common"] == set()
    # a command with actions (segany engine, segany zeroshot) has them in modules of their own
    groups = {"engine_cmd": "engine_", "zeroshot_cmd": "zeroshot_"}
    actions = {
        group: {m for m in modules if m.startswith(prefix)} - {group}
        for group, prefix in groups.items()
    }
    every_action = set().union(*actions.values())
    assert all(actions.values()) and modules == commands | every_action | {
        "common",
        "main",
        "__init__",
        "__main__",
    }
    for command in commands - {"demo_cmd", *groups}:
        assert deps[command] <= {"common"}, (command, deps[command])
    for action in every_action:
        assert deps[action] <= {"common"}, (action, deps[action])
    for group in groups:
        assert deps[group] <= {"common"} | actions[group]
    assert deps["demo_cmd"] <= {"common", "segment_cmd", "auto_cmd"}
    assert deps["main"] == commands | {"common"}


def test_engine_has_its_actions(tmp_path, capsys):
    """``segany engine`` carries ``auto`` and ``retrain``; a folder that is not a project is
    bad usage for retrain."""
    for action in ("auto", "prefill", "train-detector", "retrain", "simulate"):
        assert main(["engine", action, "--help"]) == 0
        assert f"segany engine {action}" in capsys.readouterr().out
    assert main(["engine", "retrain", str(tmp_path / "nothing")]) == 2
    assert "not a segany project" in capsys.readouterr().err
