"""The release gate: shared thresholds from conftest.py, one test per benchmark."""

from conftest import medical_gain, no_forgetting


@no_forgetting
def test_no_forgetting():
    pass


@medical_gain
def test_the_medical_adapter_helps():
    pass
