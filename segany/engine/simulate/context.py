"""What the simulated loop's rounds share: the round kinds, the round schedule's parser and
the :class:`RoundContext` a round's function gets (kept apart from :mod:`.loop` so that the
stage rounds of :mod:`.stages` and the loop import it without importing each other)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["ROUND_KINDS", "RoundContext", "parse_schedule"]

#: Round kinds and their data-engine stage: ``manual`` (assisted-manual), ``prefill``
#: (semi-automatic), ``auto`` (fully automatic).
ROUND_KINDS: dict[str, int] = {"manual": 1, "prefill": 2, "auto": 3}


@dataclass
class RoundContext:
    """What a round's function gets: the round number (1-based), its kind, the HTTP client of
    the round's annotator (on a server of the current model), the project, the config (a
    :class:`.loop.SimulationConfig`), the round's images as ``(image_id, dataset index)``
    with the dataset. The function may add fields to the round's report row (``row``, merged
    over the loop's own) and lines to ``masks.jsonl`` (``records``)."""

    number: int
    kind: str
    client: Any
    project: Any
    config: Any
    images: list[tuple[int, int]]
    dataset: Any
    row: dict[str, Any] = field(default_factory=dict)
    records: list[dict[str, Any]] = field(default_factory=list)


def parse_schedule(text: str) -> tuple[str, ...]:
    """The round kinds of a schedule ``KIND:N[,KIND:N...]`` (``KIND`` alone is ``KIND:1``),
    in order: ``"manual:3,prefill:1,auto:1"`` -> 3 x ``manual``, ``prefill``, ``auto``.
    Raises ValueError naming the bad part and the allowed form."""
    form = f"KIND:N[,KIND:N...] with KIND one of {', '.join(ROUND_KINDS)} and N >= 1"
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"the schedule is empty; give {form}")
    kinds: list[str] = []
    for part in text.split(","):
        kind, sep, count = part.strip().partition(":")
        kind = kind.strip()
        if kind not in ROUND_KINDS:
            raise ValueError(f"schedule part {part.strip()!r}: unknown round kind; give {form}")
        if not sep:
            n = 1
        else:
            try:
                n = int(count.strip())
            except ValueError:
                n = 0
            if n < 1:
                raise ValueError(
                    f"schedule part {part.strip()!r}: the count must be an integer >= 1; "
                    f"give {form}"
                )
        kinds += [kind] * n
    return tuple(kinds)
