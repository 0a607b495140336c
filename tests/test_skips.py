"""The suite itself: where it finds the benchmark data ($FTGATE_TEST_DATA) and why tests skip.

Runs pytest in a subprocess, on a copy of tests/conftest.py or on the real test files, with
chosen modules hidden (``HIDE_PLUGIN``) to stand for a machine that lacks them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

# A pytest plugin (``-p hide_modules``) that makes the named modules not installed for the whole
# run: find_spec answers None and import raises ModuleNotFoundError, as without the package.
HIDE_PLUGIN = """
import sys

HIDDEN = {hidden!r}


class _Hide:
    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HIDDEN:
            return None
        return self.finder.find_spec(name, path, target)

    def __getattr__(self, name):
        return getattr(self.finder, name)


sys.meta_path[:] = [_Hide(f) if hasattr(f, "find_spec") else f for f in sys.meta_path]
"""

DATA_TEST = """
def test_reads_data(shared_data):
    print("DATA", shared_data("fpb"))
"""


def hide(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, *modules: str) -> list[str]:
    """Arguments that run pytest (in a subprocess) as if ``modules`` were not installed."""
    pytester.makepyfile(hide_modules=HIDE_PLUGIN.format(hidden=set(modules)))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(pytester.path), os.environ.get("PYTHONPATH", "")]))
    return ["-p", "hide_modules"]


@pytest.fixture
def data_project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """A project with the suite's conftest and one test that needs fpb/ from the benchmark data."""
    pytester.makeconftest((TESTS / "conftest.py").read_text())
    pytester.makepyfile(test_data=DATA_TEST)
    monkeypatch.delenv("FTGATE_TEST_DATA", raising=False)
    return pytester


def test_the_data_folder_comes_from_ftgate_test_data(
    data_project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "data" / "fpb").mkdir(parents=True)
    monkeypatch.setenv("FTGATE_TEST_DATA", str(tmp_path / "data"))
    result = data_project.runpytest_subprocess("-s", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([f"*DATA {tmp_path / 'data'}*"])


def test_without_the_data_the_skip_names_the_variable(
    data_project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("FTGATE_TEST_DATA", str(tmp_path / "empty"))
    result = data_project.runpytest_subprocess("-rs", "-p", "no:cacheprovider")
    result.assert_outcomes(skipped=1)
    missing = tmp_path / "empty" / "fpb"
    result.stdout.fnmatch_lines([f"SKIPPED*benchmark data not found: {missing} (set FTGATE_TEST_DATA*"])


def test_torch_tests_say_how_to_install_torch(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    args = hide(pytester, monkeypatch, "torch", "peft")
    result = pytester.runpytest_subprocess(str(TESTS / "test_transformers_backend.py"), "-rs", *args)
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["SKIPPED*torch not installed: pip install torch==2.13.0 -e .[[]torch[]]"])


def test_llamacpp_tests_say_why_llama_cpp_is_missing(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = hide(pytester, monkeypatch, "llama_cpp")
    test = "test_lora_delta_matches_peft_on_the_same_weights"
    result = pytester.runpytest_subprocess(str(TESTS / "test_llamacpp_backend.py"), "-rs", "-k", test, *args)
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["SKIPPED*llama-cpp-python not installed (no wheel on PyPI: see README)*"])
