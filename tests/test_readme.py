"""The README stays true: every ftgate option, benchmark, repository path and ``pytest_ftgate.*``
name it mentions exists.

Each check collects the names from the README text (prose, tables, code) and fails with the list of
those that do not exist, so a renamed option or a moved file shows up here and not in a newcomer's
terminal.
"""

from __future__ import annotations

import json
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_ftgate import options

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()

# Top-level folders whose paths the README may name (anything else, e.g. ../shared/data or
# ~/.cache/ftgate, is outside the repository).
REPO_FOLDERS = ("examples", "benchmarks", "pytest_ftgate", "tests", ".ci")


def readme_options(text: str) -> set[str]:
    return set(re.findall(r"--ftgate-[a-z]+(?:-[a-z]+)*", text))


def readme_benchmarks(text: str) -> set[str]:
    """Names in the Benchmarks table's first column, the ``ftgate`` marker's arguments and
    ``Gate.compare`` calls (custom benchmarks registered in the README's own examples excluded)."""
    section = re.search(r"^## Benchmarks\n(.*?)(?=^## |\Z)", text, flags=re.MULTILINE | re.DOTALL)
    names = set(re.findall(r"^\| `([^`]+)` \|", section.group(1) if section else "", flags=re.MULTILINE))
    for args in re.findall(r"mark\.ftgate\(\s*(\[[^\]]*\]|\"[^\"]*\"|'[^']*')", text):
        names.update(re.findall(r"[\"']([^\"']+)[\"']", args))
    names.update(re.findall(r"\.compare\(\s*[\"']([^\"']+)[\"']", text))
    return names


def readme_paths(text: str) -> set[str]:
    """Repository paths: in code spans, code blocks, links or prose, starting with a top-level folder.
    A ``# path`` comment opening a code block names a file of the reader's project: not checked."""
    text = re.sub(r"^(```\w*\n)#\s*[\w./-]+\n", r"\1", text, flags=re.MULTILINE)
    folders = "|".join(re.escape(f) for f in REPO_FOLDERS)
    found = re.findall(rf"(?<![\w./~-])((?:{folders})/[\w./-]*)", text)
    found += [link for link in re.findall(r"\]\(([^)\s]+)\)", text) if "://" not in link and not link.startswith("#")]
    return {path.rstrip(".,:;") for path in found if "<" not in path and "*" not in path}


def readme_python_names(text: str) -> set[str]:
    """``pytest_ftgate.x.y`` names: modules (``python -m pytest_ftgate.seed_study``) or attributes."""
    return {name.rstrip(".") for name in re.findall(r"\bpytest_ftgate(?:\.[A-Za-z_]\w*)+", text)}


@pytest.fixture(scope="module")
def builtin_benchmarks() -> set[str]:
    """The built-in and synthetic benchmark names, from a fresh interpreter: tests in this session
    register benchmarks of their own."""
    code = "import json; from pytest_ftgate.benchmarks import benchmark_names; print(json.dumps(benchmark_names()))"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    return set(json.loads(run.stdout))


def missing_options(text: str, config: pytest.Config) -> set[str]:
    """Options that are not both an ``options`` constant and registered with pytest."""
    constants = {value for name, value in vars(options).items() if name.isupper() and str(value).startswith("--")}
    missing = set()
    for option in readme_options(text):
        try:
            config.getoption(option)
        except ValueError:
            missing.add(option)
        if option not in constants:
            missing.add(option)
    return missing


def missing_paths(text: str) -> set[str]:
    return {path for path in readme_paths(text) if not (ROOT / path).exists()}


def missing_python_names(text: str) -> set[str]:
    missing = set()
    for name in readme_python_names(text):
        try:
            pkgutil.resolve_name(name)
        except (ImportError, AttributeError, ValueError):
            missing.add(name)
    return missing


def test_the_readme_names_options_benchmarks_and_paths() -> None:
    """The extraction finds what it should (else the checks below would pass vacuously)."""
    assert {"--ftgate-adapter", "--ftgate-base", "--ftgate-data"} <= readme_options(README)
    assert {"fpb", "medmcqa", "convfinqa"} <= readme_benchmarks(README)
    assert "examples/ci/adapter-gate.yml" in readme_paths(README)
    assert "pytest_ftgate.seed_study" in readme_python_names(README)


def test_every_option_it_names_is_registered(pytestconfig: pytest.Config) -> None:
    missing = missing_options(README, pytestconfig)
    assert not missing, f"README.md names options that are not registered: {sorted(missing)}"


def test_every_benchmark_it_names_is_registered(builtin_benchmarks: set[str]) -> None:
    missing = readme_benchmarks(README) - builtin_benchmarks
    assert not missing, f"README.md names benchmarks that are not registered: {sorted(missing)}"


def test_every_repository_path_it_names_exists() -> None:
    missing = missing_paths(README)
    assert not missing, f"README.md names paths that do not exist: {sorted(missing)}"


def test_every_pytest_ftgate_name_it_names_exists() -> None:
    missing = missing_python_names(README)
    assert not missing, f"README.md names pytest_ftgate modules or attributes that do not exist: {sorted(missing)}"


def test_each_check_catches_a_name_that_does_not_exist(
    pytestconfig: pytest.Config, builtin_benchmarks: set[str]
) -> None:
    text = README + (
        "\n`--ftgate-no-such-option=X`, `python -m pytest_ftgate.no_such_module`,"
        " [notes](benchmarks/NO_SUCH_FILE.md), `examples/no_such_example/`\n"
        '```python\n@pytest.mark.ftgate(["fpb", "no-such-benchmark"], max_drop=2.0)\n```\n'
    )
    assert "--ftgate-no-such-option" in missing_options(text, pytestconfig)
    assert "no-such-benchmark" in readme_benchmarks(text) - builtin_benchmarks
    assert {"benchmarks/NO_SUCH_FILE.md", "examples/no_such_example/"} <= missing_paths(text)
    assert "pytest_ftgate.no_such_module" in missing_python_names(text)
