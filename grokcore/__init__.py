"""grokcore: tasks, models, one vectorised training loop, a run store and progress measures
for the grokking literature. See DESIGN.md in the book's repository for the data flow."""

__version__ = "0.1.0"

from grokcore.config import AdamW, ConfigError, RunConfig, lr_weight_decay_grid  # noqa: E402
from grokcore.models import ModularMLP, SumEmbeddingMLP, Transformer  # noqa: E402
from grokcore.runs import Run, load  # noqa: E402
from grokcore.tasks import OPS, POWER_OPS, AlgorithmicTask, ToyAddition  # noqa: E402
from grokcore.train import trace_output_layer, train  # noqa: E402
from grokcore import measures, models, plots  # noqa: E402

__all__ = [
    "OPS",
    "POWER_OPS",
    "AdamW",
    "AlgorithmicTask",
    "ConfigError",
    "Run",
    "SumEmbeddingMLP",
    "ToyAddition",
    "RunConfig",
    "ModularMLP",
    "Transformer",
    "load",
    "lr_weight_decay_grid",
    "measures",
    "models",
    "plots",
    "trace_output_layer",
    "train",
]
