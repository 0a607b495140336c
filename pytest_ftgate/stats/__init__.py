"""Paired statistics for base-vs-tuned comparisons. Pure functions, standard library only (no
numpy, no pytest), so importing it stays cheap.

- ``paired``: the counts, the skewness-corrected score interval (why that one: its docstring),
  the exact McNemar test;
- ``sample_size``: the smallest drop n examples detect, the examples a verdict needs;
- ``verdict``: ``decide``, the fixed-n verdict against the user's thresholds;
- ``sequential``: anytime-valid confidence sequences and early stopping.

Units: ``delta``, interval bounds, ``max_drop``, ``min_gain`` and drops are percentage points of
accuracy, tuned minus base. Flip rates are fractions of the examples (0-1): the share of
examples whose correctness changed, ``(lost + gained) / n``. The vectorised twins that the
simulation scripts use live beside them, in ``benchmarks/stats_arrays.py``.
"""

from pytest_ftgate.stats.paired import mcnemar_exact, paired_counts, paired_diff_interval, score_interval
from pytest_ftgate.stats.sample_size import examples_needed, minimal_detectable_drop
from pytest_ftgate.stats.sequential import EarlyStopPolicy, early_stop_decision, paired_confidence_sequence
from pytest_ftgate.stats.verdict import decide

__all__ = [
    "EarlyStopPolicy",
    "decide",
    "early_stop_decision",
    "examples_needed",
    "mcnemar_exact",
    "minimal_detectable_drop",
    "paired_confidence_sequence",
    "paired_counts",
    "paired_diff_interval",
    "score_interval",
]
