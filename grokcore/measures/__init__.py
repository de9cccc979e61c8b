"""Progress measures: functions of a run's history or of its checkpoints."""

from grokcore.measures import fourier, representation
from grokcore.measures.curves import first_step, grokking_delays, loss_spikes
from grokcore.measures.weights import common_output_split

__all__ = ["common_output_split", "first_step", "fourier", "grokking_delays", "loss_spikes", "representation"]
