"""Thresholds a team agrees on once, shared by every gate test in this folder."""

import pytest

# Points each benchmark may lose after fine-tuning, and the gain the adapter is for.
MAX_DROP = {"fpb": 2.0, "convfinqa": 2.0}
MIN_GAIN = {"medmcqa": 3.0}

no_forgetting = pytest.mark.ftgate(sorted(MAX_DROP), max_drop=max(MAX_DROP.values()))
medical_gain = pytest.mark.ftgate("medmcqa", min_gain=MIN_GAIN["medmcqa"])
