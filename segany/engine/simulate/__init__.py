"""The simulated annotator that measures the data engine's virtuous cycle: a simulated
annotator clicking through the annotation server's HTTP API against a hidden truth
(:mod:`.annotator`), rounds of annotation with a retrain after each (:mod:`.loop`; the
stage-2 and stage-3 rounds in :mod:`.stages`, a round schedule in :mod:`.context`), the report
(:mod:`.report`) and a weak starting model (:mod:`.weak`). ``segany engine simulate`` runs it
(:mod:`segany.cli.engine_simulate`).

Needs the ``engine`` extra; the server, the retrain and the weak model need torch.
"""

from .annotator import MaskOutcome, SimulatedAnnotator, SimulationError, target_order
from .context import ROUND_KINDS, RoundContext, parse_schedule
from .loop import SimulationConfig, check_config, run_simulation
from .report import markdown_table, plot_report, write_report
from .stages import auto_round, prefill_round
from .weak import make_weak_model

__all__ = [
    "ROUND_KINDS",
    "MaskOutcome",
    "RoundContext",
    "SimulatedAnnotator",
    "SimulationConfig",
    "SimulationError",
    "auto_round",
    "check_config",
    "make_weak_model",
    "markdown_table",
    "parse_schedule",
    "plot_report",
    "prefill_round",
    "run_simulation",
    "target_order",
    "write_report",
]
