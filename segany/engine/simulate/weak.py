"""A weak starting model for the simulated loop: a model with its mask decoder re-initialised
(random weights from a seed, optionally blended with the base decoder's: ``keep`` of the base,
``1 - keep`` of the random weights) and trained only a few steps on procedural scenes, so that
retraining on the masks the loop collects has room to help. The image and prompt encoders are
kept (a decoder-only fine-tune, as :data:`segany.engine.retrain.DEFAULT_CONFIG` does)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = ["WEAK_DATA", "make_weak_model"]

#: The procedural scenes a weak model's decoder is trained on (other seeds than a loop's).
WEAK_DATA = "procedural:5000:9001"


def make_weak_model(
    out_dir: str | os.PathLike,
    *,
    base: str = "segany_tiny",
    steps: int = 0,
    keep: float = 0.0,
    seed: int = 0,
    data: Any = WEAK_DATA,
    device: str | None = None,
    progress: bool = False,
) -> Path:
    """Write a weak model into ``out_dir`` and return its safetensors file.

    Args:
        base: the model whose encoders are kept (a variant name or checkpoint path).
        steps: decoder training steps after the re-initialisation (0: the random decoder).
        keep: the base decoder's share of each decoder weight, in [0, 1) (0: fully random).
        seed: seed of the re-initialisation (and of the training).
        data: training data spec(s) of the decoder (:func:`segany.data.datasets.open_dataset`).
        device: where to train (default: CUDA if available).

    Raises:
        ValueError: a negative ``steps``, ``keep`` outside [0, 1).
    """
    import torch

    from ...build import load_model
    from ...train import TrainConfig, train
    from ...train.outputs import save_state_dict
    from ...train.trainer import MODEL_NAME
    from ..retrain import DEFAULT_CONFIG

    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"weak steps must be an integer >= 0; got {steps!r}")
    if isinstance(keep, bool) or not isinstance(keep, (int, float)) or not 0 <= keep < 1:
        raise ValueError(f"weak keep must be in [0, 1); got {keep!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = load_model(base, precision="fp32", device="cpu")
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    base_state = {k: v.clone() for k, v in model.mask_decoder.state_dict().items()}
    try:
        for module in model.mask_decoder.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()
    finally:
        torch.random.set_rng_state(gen_state)
    if keep > 0:
        with torch.no_grad():
            for name, value in model.mask_decoder.state_dict().items():
                if value.is_floating_point():
                    value.mul_(1 - keep).add_(base_state[name], alpha=keep)
    init = out / "weak_init.safetensors"
    save_state_dict(model.state_dict(), init, metadata={"producer": "segany.engine.simulate"})
    if steps == 0:
        return init
    config = TrainConfig().replace(
        **{
            **DEFAULT_CONFIG,
            "init": str(init),
            "data": (data,) if isinstance(data, (str, dict)) else tuple(data),
            "out_dir": str(out / "weak_train"),
            "steps": steps,
            "warmup_steps": min(int(DEFAULT_CONFIG["warmup_steps"]), max(1, steps // 10)),
            "checkpoint_every": max(steps, 1),
            "lr": 1e-3,
            "seed": seed,
        }
    )
    train(config, device=device, resume=True, progress=progress)
    return out / "weak_train" / MODEL_NAME
