"""Retraining as the dataset grows: frozen dataset versions with a fixed held-out split
(:mod:`.snapshot`), and the retrain procedure (:mod:`.run`): fine-tune the current model on
the newest snapshot, evaluate old and new on the held-out images with the interactive
protocol, register the new model version with its evaluation, and switch the project to it
only when it is better. ``segany engine retrain DIR`` runs it (:mod:`segany.cli.engine_retrain`).

Needs the ``engine`` extra; the training and evaluation need torch (imported when used).
"""

from .run import (
    DEFAULT_CONFIG,
    EVAL_CLICKS,
    RetrainResult,
    evaluate_model,
    read_report,
    retrain,
    retrain_config,
)
from .snapshot import (
    HOLDOUT_FRACTION,
    Snapshot,
    check_stages,
    holdout_key,
    holdout_split,
    open_snapshot,
    snapshot,
)

__all__ = [
    "DEFAULT_CONFIG",
    "EVAL_CLICKS",
    "HOLDOUT_FRACTION",
    "RetrainResult",
    "Snapshot",
    "check_stages",
    "evaluate_model",
    "holdout_key",
    "holdout_split",
    "open_snapshot",
    "read_report",
    "retrain",
    "retrain_config",
    "snapshot",
]
