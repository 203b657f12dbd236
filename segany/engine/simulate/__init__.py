"""The simulated annotator that measures the data engine's virtuous cycle: a simulated
annotator clicking through the annotation server's HTTP API against a hidden truth
(:mod:`.annotator`), rounds of annotation with a retrain after each (:mod:`.loop`), the report
(:mod:`.report`) and a weak starting model (:mod:`.weak`). ``segany engine simulate`` runs it
(:mod:`segany.cli.engine_simulate`).

Needs the ``engine`` extra; the server, the retrain and the weak model need torch.
"""

from .annotator import MaskOutcome, SimulatedAnnotator, SimulationError, target_order
from .loop import ROUND_KINDS, RoundContext, SimulationConfig, check_config, run_simulation
from .report import markdown_table, plot_report, write_report
from .weak import make_weak_model

__all__ = [
    "ROUND_KINDS",
    "MaskOutcome",
    "RoundContext",
    "SimulatedAnnotator",
    "SimulationConfig",
    "SimulationError",
    "check_config",
    "make_weak_model",
    "markdown_table",
    "plot_report",
    "run_simulation",
    "target_order",
    "write_report",
]
