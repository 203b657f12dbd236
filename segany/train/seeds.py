"""The random streams of a training run, each derived in one place from the run's seed.

Everything random in a training step is a pure function of ``(config.seed, step, rank)``: that is
what lets a resumed run compute the same losses as an uninterrupted one without saving any
loader or generator state. Each :class:`Stream` has its own seed derivation, so the streams
never share draws:

* ``IMAGE_ORDER`` (numpy): the permutation of the dataset in epoch ``e``, the same on every
  process (:class:`~segany.train.data.StepBatches`);
* ``MASK_CHOICE`` (numpy): which masks of each image a step trains on
  (:func:`~segany.train.data.prepare_sample`);
* ``PROMPTS`` (a ``torch.Generator``): first prompts, corrective clicks, and which rounds add no
  point or carry gradients (:class:`~segany.train.engine.InteractiveSam`);
* ``DROP_PATH`` (the global torch RNG, re-seeded every step): the stochastic-depth masks;
* ``TEXT`` (numpy): region crops and caption choices of text prompts
  (:mod:`segany.train.text`).

The derivations are part of a run's definition: changing one changes the result of every run.
The from-scratch initialisation (:func:`~segany.train.model.build_training_model`) draws from
:data:`INIT_SEED` whatever the run's seed.
"""

from __future__ import annotations

import enum

import numpy as np

__all__ = ["INIT_SEED", "Stream", "step_rng", "step_seed"]

#: Seed of the from-scratch weight initialisation (the same for every run).
INIT_SEED = 0


class Stream(enum.Enum):
    """A purpose that draws random numbers during training (see the module docstring)."""

    IMAGE_ORDER = "image_order"
    MASK_CHOICE = "mask_choice"
    PROMPTS = "prompts"
    DROP_PATH = "drop_path"
    TEXT = "text"


# torch streams: the integer seed ``seed * A + step * B + rank``.
_TORCH_FACTORS = {Stream.PROMPTS: (7919, 101), Stream.DROP_PATH: (1_000_003, 1009)}
# numpy streams: a SeedSequence entropy made of these fields (and a tag that sets it apart).
_MASK_CHOICE_TAG = 1
_TEXT_TAG = 2


def step_seed(stream: Stream, seed: int, step: int, rank: int = 0) -> int:
    """The integer seed of the torch stream ``stream`` (``PROMPTS`` or ``DROP_PATH``) at
    ``step`` on process ``rank`` of a run seeded ``seed``."""
    if stream not in _TORCH_FACTORS:
        raise ValueError(f"{stream} is a numpy stream: use step_rng")
    a, b = _TORCH_FACTORS[stream]
    return seed * a + step * b + rank


def step_rng(stream: Stream, seed: int, step: int, rank: int = 0) -> np.random.Generator:
    """A numpy generator for the stream ``stream`` of a run seeded ``seed``: ``MASK_CHOICE`` at
    ``step`` on process ``rank`` (``TEXT`` likewise), or ``IMAGE_ORDER`` of epoch ``step``
    (every process alike, ``rank`` unused)."""
    if stream is Stream.MASK_CHOICE:
        return np.random.default_rng([seed, step, rank, _MASK_CHOICE_TAG])
    if stream is Stream.TEXT:
        return np.random.default_rng([seed, step, rank, _TEXT_TAG])
    if stream is Stream.IMAGE_ORDER:
        return np.random.default_rng([seed, step])
    raise ValueError(f"{stream} is a torch stream: use step_seed")
