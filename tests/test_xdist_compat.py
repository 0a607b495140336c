"""xdist_compat: ``--dist loadgroup`` keeps its groups on pytest 9.2 (structured node ids) while the
ids users see stay intact, and the module stays out of every other run."""

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


def test_a_worker_config_without_the_loadgroup_setting_is_left_alone(pytester: pytest.Pytester) -> None:
    items = _items(pytester)
    config = items[0].config
    config.workerinput = {"workerid": "gw0"}  # type: ignore[attr-defined]
    assert not hasattr(config.option, "loadgroup")
    before = [item.nodeid for item in items]
    assert xdist_compat.add_group_suffixes(config, items) == 0  # no ValueError("no option named 'loadgroup'")
    assert [item.nodeid for item in items] == before


def test_acts_only_on_a_loadgroup_worker(pytester: pytest.Pytester) -> None:
    items = _items(pytester)
    config = items[0].config
    config.option.loadgroup = True
    assert xdist_compat.add_group_suffixes(config, items) == 0  # the controller, or a plain run
    config.workerinput = {"workerid": "gw0"}  # type: ignore[attr-defined]
    config.option.loadgroup = False
    assert xdist_compat.add_group_suffixes(config, items) == 0  # a worker under --dist load


def test_suffix_for_the_scheduler_then_the_original_ids(pytester: pytest.Pytester) -> None:
    pytest.importorskip("_pytest.nodeid", reason="a pytest with structured node ids")
    items = _items(pytester)
    config = items[0].config
    config.workerinput = {"workerid": "gw0"}  # type: ignore[attr-defined]
    config.option.loadgroup = True
    before = [item.nodeid for item in items]
    assert xdist_compat.add_group_suffixes(config, items) == 4
    assert [item.nodeid for item in items][:4] == [f"{nodeid}@g" for nodeid in before[:4]]
    assert all(xdist_compat.has_group_suffix(item.nodeid) for item in items[:4])
    assert not any(xdist_compat.has_group_suffix(item.nodeid) for item in items[4:])
    assert xdist_compat.restore_node_ids(items) == 4
    assert [item.nodeid for item in items] == before
    assert xdist_compat.restore_node_ids(items) == 0


def test_steps_aside_when_xdist_kept_its_own_suffix(pytester: pytest.Pytester) -> None:
    nodeid = pytest.importorskip("_pytest.nodeid", reason="a pytest with structured node ids")
    items = _items(pytester)
    config = items[0].config
    config.workerinput = {"workerid": "gw0"}  # type: ignore[attr-defined]
    config.option.loadgroup = True
    for item in items[:4]:  # what a fixed xdist does
        item._id = nodeid.coerce_node_id(item.nodeid + "@g")
    suffixed = [item.nodeid for item in items]
    assert xdist_compat.add_group_suffixes(config, items) == 0
    assert xdist_compat.restore_node_ids(items) == 0
    assert [item.nodeid for item in items] == suffixed
