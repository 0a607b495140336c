"""xdist_compat: ``--dist loadgroup`` keeps its groups on pytest 9.2 (structured node ids) while the
ids users see stay intact, and the module stays out of every other run.

Checked against pytest-xdist's own suite (tag v3.8.0, pytest 9.2.0, pluggy 1.7.0, execnet 2.1.2,
Python 3.11; venvs with and without ``pip install -e .``): ``python -m pytest testing/acceptance_test.py
testing/test_dsession.py -p no:randomly -p no:cacheprovider --basetemp=DIR`` (136 tests).
- Group tests (``TestGroupScope``, 6): without ftgate 1 passed, 5 failed; with it 4 passed, 2 failed.
  ``test_by_module``, ``test_by_class``, ``test_module_single_start`` pass only with ftgate (the groups
  hold). ``test_multiple_group_marks``/``_order`` fail in both: they read ``@group1_group2`` from the
  ``-v`` lines, which pytest 9.2 drops and ftgate keeps out of reports on purpose.
- Both files: 123 passed, 5 failed, 2 skipped, 6 xfailed in each venv. The other differences,
  ``TestNodeFailure::test_disable_restart``, ``test_max_worker_restart_die`` and
  ``test_max_worker_restart_tests_queued`` (fail with ftgate), fail the same in a venv with only
  syrupy 7.0.3 added (ftgate's dependency): its warning and summary change the lines they match.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import pytest

from pytest_ftgate import xdist_compat

pytest.importorskip("xdist")

# A grouped parametrized test whose second case fails, beside plain tests that spread out.
PROJECT = """
import pytest

@pytest.mark.xdist_group("g")
@pytest.mark.parametrize("x", [0, 1, 2])
def test_x(x):
    assert x != 1

@pytest.mark.xdist_group("g")
def test_y():
    pass

def test_plain_1():
    pass

def test_plain_2():
    pass

def test_plain_3():
    pass
"""


def _worker_lines(stdout: str) -> list[tuple[str, str, str]]:
    """``(worker, outcome, node id)`` of each ``-v`` result line."""
    return re.findall(r"\[(gw\d)\] \[\s*\d+%\] (PASSED|FAILED) (\S+)", stdout)


def _junit_cases(path) -> list[str]:
    return [case.get("name") for case in ET.parse(path).getroot().iter("testcase")]


@pytest.mark.parametrize("dist", [["--dist", "loadgroup"], [], ["--dist", "load"]], ids=["loadgroup", "n2", "load"])
def test_parametrized_ids_stay_intact_in_terminal_summary_and_junit(pytester: pytest.Pytester, dist: list[str]) -> None:
    pytester.makepyfile(test_a=PROJECT)
    junit = pytester.path / "junit.xml"
    result = pytester.runpytest("-n", "2", *dist, "-v", "-p", "no:randomly", "-rA", f"--junitxml={junit}")
    result.assert_outcomes(passed=6, failed=1)
    ran = _worker_lines(result.stdout.str())
    assert sorted(test for _, _, test in ran) == sorted(
        ["test_a.py::test_x[0]", "test_a.py::test_x[1]", "test_a.py::test_x[2]", "test_a.py::test_y"]
        + [f"test_a.py::test_plain_{i}" for i in (1, 2, 3)]
    )
    result.stdout.fnmatch_lines(["FAILED test_a.py::test_x[1] - assert 1 != 1"])
    assert "@" not in result.stdout.str().split("short test summary info")[-1]
    assert sorted(_junit_cases(junit)) == sorted(
        ["test_x[0]", "test_x[1]", "test_x[2]", "test_y", "test_plain_1", "test_plain_2", "test_plain_3"]
    )
    if dist == ["--dist", "loadgroup"]:  # the group still holds: one worker runs all of it
        assert len({worker for worker, _, test in ran if "test_x" in test or "test_y" in test}) == 1


def test_last_failed_reruns_a_failed_parametrized_test_under_loadgroup(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_a=PROJECT)
    first = pytester.runpytest("-n", "2", "--dist", "loadgroup", "-p", "no:randomly")
    first.assert_outcomes(passed=6, failed=1)
    again = pytester.runpytest("-n", "2", "--dist", "loadgroup", "-p", "no:randomly", "--lf", "-v")
    again.assert_outcomes(failed=1)  # only the failed case: its id in the cache is the one collected
    assert [test for _, _, test in _worker_lines(again.stdout.str())] == ["test_a.py::test_x[1]"]


def _items(pytester: pytest.Pytester) -> list[pytest.Item]:
    pytester.makepyfile(test_a=PROJECT)
    items, _ = pytester.inline_genitems("-p", "no:randomly")
    assert [item.name for item in items][:4] == ["test_x[0]", "test_x[1]", "test_x[2]", "test_y"]
    return items


class _Interactor:
    """Stands in for xdist's worker plugin (found by its class name): records what it sends."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, object]]] = []

    def sendevent(self, name: str, **kwargs: object) -> None:
        self.sent.append((name, kwargs))


_Interactor.__name__ = "WorkerInteractor"


def _worker(pytester: pytest.Pytester, loadgroup: bool | None) -> tuple[list[pytest.Item], _Interactor]:
    """Collected items, their config made a worker's (``loadgroup`` None: the setting is absent)."""
    items = _items(pytester)
    config = items[0].config
    config.workerinput = {"workerid": "gw0"}  # type: ignore[attr-defined]
    if loadgroup is not None:
        config.option.loadgroup = loadgroup
    interactor = _Interactor()
    config.pluginmanager.register(interactor)
    return items, interactor


def _send_collection(items: list[pytest.Item], interactor: _Interactor, ids: list[str] | None = None) -> list[str]:
    """What xdist's worker does at the end of collection, inside ``suffixes_for_scheduler``."""
    with xdist_compat.suffixes_for_scheduler(items[0].config, items):
        interactor.sendevent("collectionfinish", topdir="/x", ids=ids or [item.nodeid for item in items])
        interactor.sendevent("logstart", nodeid=items[0].nodeid)
    assert interactor.sent[1] == ("logstart", {"nodeid": items[0].nodeid})  # other events pass as they are
    return list(interactor.sent[0][1]["ids"])  # type: ignore[call-overload]


def test_a_worker_config_without_the_loadgroup_setting_is_left_alone(pytester: pytest.Pytester) -> None:
    items, interactor = _worker(pytester, loadgroup=None)
    assert not hasattr(items[0].config.option, "loadgroup")
    before = [item.nodeid for item in items]
    assert _send_collection(items, interactor) == before  # no ValueError("no option named 'loadgroup'")


def test_acts_only_on_a_loadgroup_worker(pytester: pytest.Pytester) -> None:
    items, interactor = _worker(pytester, loadgroup=False)  # a worker under --dist load
    assert _send_collection(items, interactor) == [item.nodeid for item in items]
    del items[0].config.workerinput  # the controller, or a plain run
    items[0].config.option.loadgroup = True
    with xdist_compat.suffixes_for_scheduler(items[0].config, items) as acting:
        assert not acting


def test_the_suffix_goes_to_the_scheduler_only(pytester: pytest.Pytester) -> None:
    items, interactor = _worker(pytester, loadgroup=True)
    before = [item.nodeid for item in items]
    assert _send_collection(items, interactor) == [f"{nodeid}@g" for nodeid in before[:4]] + before[4:]
    assert [item.nodeid for item in items] == before  # the items keep their ids
    assert interactor.sendevent.__func__ is _Interactor.sendevent  # type: ignore[attr-defined] # put back


def test_several_groups_are_sorted_and_joined_as_xdist_does(pytester: pytest.Pytester) -> None:
    items, _ = _worker(pytester, loadgroup=True)
    for name in ("b", "a"):
        items[5].add_marker(pytest.mark.xdist_group(name=name))
    assert xdist_compat.scheduler_ids(items, [item.nodeid for item in items])[5] == "test_a.py::test_plain_2@a_b"


def test_steps_aside_when_xdist_kept_its_own_suffix(pytester: pytest.Pytester) -> None:
    items, interactor = _worker(pytester, loadgroup=True)
    suffixed = [f"{item.nodeid}@g" for item in items[:4]] + [item.nodeid for item in items[4:]]
    assert _send_collection(items, interactor, ids=suffixed) == suffixed  # what a fixed xdist sends


def test_an_at_sign_in_a_path_is_not_taken_for_xdists_suffix(pytester: pytest.Pytester) -> None:
    items, _ = _worker(pytester, loadgroup=True)
    ids = [f"sub@dir/{item.nodeid}" for item in items]
    assert xdist_compat.scheduler_ids(items, ids)[:4] == [f"{nodeid}@g" for nodeid in ids[:4]]


# Writes the node ids other plugins see on a worker, at the end of collection and in a
# modifyitems wrapper (after every plain hook), to ids-<worker>.txt.
SEEN_IDS_CONFTEST = """
import os
import pytest

def _write(when, items):
    worker = os.environ.get("PYTEST_XDIST_WORKER", "controller")
    with open(f"ids-{worker}.txt", "a") as out:
        out.writelines(f"{when} {item.nodeid}\\n" for item in items)

@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(items):
    result = yield
    _write("modifyitems", items)
    return result

def pytest_collection_finish(session):
    _write("finish", session.items)
"""


def test_other_plugins_never_see_the_suffix(pytester: pytest.Pytester) -> None:
    """Only xdist's scheduler gets ``test_x[1]@g``: plugins reading ids on a worker at the end of
    collection (syrupy records its selected tests there) see the ids as collected. Before, they saw
    the suffix, and syrupy warned "2 selected test(s) missing from collected items" on every
    grouped loadgroup run (seen in pytest-xdist's own TestGroupScope)."""
    pytester.makeconftest(SEEN_IDS_CONFTEST)
    pytester.makepyfile(test_a=PROJECT)
    result = pytester.runpytest("-n", "2", "--dist", "loadgroup", "-v", "-p", "no:randomly")
    result.assert_outcomes(passed=6, failed=1)
    seen = [line for path in sorted(pytester.path.glob("ids-gw*.txt")) for line in path.read_text().splitlines()]
    assert len(seen) == 2 * 2 * 7  # two workers, two places, seven tests
    assert not [line for line in seen if "@" in line]
    assert "missing from collected items" not in result.stdout.str()
    ran = _worker_lines(result.stdout.str())
    assert len({worker for worker, _, test in ran if "test_x" in test or "test_y" in test}) == 1  # still grouped
