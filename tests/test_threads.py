"""The thread policy (``pytest_ftgate.threads``): CPUs from affinity and cgroup quotas, environment
defaults that never override the user, and libgomp really reading the wait policy."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pytest_ftgate import threads

POLICY_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", *threads.COUNT_VARS, threads.POLICY_ENV, "PYTEST_XDIST_WORKER_COUNT")


def _cgroup(root: Path, own: str, limits: dict[str, str]) -> Path:
    """A fake /sys/fs/cgroup under ``root`` (``limits``: folder -> cpu.max text) and /proc/self/cgroup."""
    for folder, text in limits.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        (root / folder / "cpu.max").write_text(text)
    proc = root / "proc-self-cgroup"
    proc.write_text(f"0::{own}\n")
    return proc


@pytest.mark.parametrize(
    ("text", "cpus"),
    [("max 100000\n", None), ("200000 100000\n", 2.0), ("150000 100000", 1.5), ("garbage", None), ("0 100000", None)],
)
def test_cpu_max_lines(text: str, cpus: float | None) -> None:
    assert threads._quota(text) == cpus


def test_cgroup_quota_of_own_cgroup_and_parents_smallest_wins(tmp_path: Path) -> None:
    proc = _cgroup(
        tmp_path, "/ci.slice/job-7", {"": "max 100000", "ci.slice": "300000 100000", "ci.slice/job-7": "150000 100000"}
    )
    assert threads.cgroup_cpus(tmp_path, proc) == 2  # 1.5 CPUs of quota: rounded up
    (tmp_path / "ci.slice" / "cpu.max").write_text("100000 100000")
    assert threads.cgroup_cpus(tmp_path, proc) == 1  # a parent's smaller quota wins


def test_no_quota_is_none(tmp_path: Path) -> None:
    proc = _cgroup(tmp_path, "/user.slice", {"": "max 100000", "user.slice": "max 100000"})
    assert threads.cgroup_cpus(tmp_path, proc) is None
    assert threads.cgroup_cpus(tmp_path / "missing", tmp_path / "missing-proc") is None


def test_cgroup_v1_quota(tmp_path: Path) -> None:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("250000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert threads.cgroup_cpus(tmp_path, tmp_path / "no-proc") == 3
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert threads.cgroup_cpus(tmp_path, tmp_path / "no-proc") is None


def test_usable_cpus_is_affinity_capped_by_quota(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    monkeypatch.setattr(threads, "cgroup_cpus", lambda: 4)
    assert threads.usable_cpus() == 4  # a container with --cpus=4 on a 64-core host
    monkeypatch.setattr(threads, "cgroup_cpus", lambda: None)
    assert threads.usable_cpus() == 64
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert threads.usable_cpus() == 2  # taskset -c 0,1


def test_process_share_divides_between_xdist_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threads, "usable_cpus", lambda: 8)
    assert threads.process_share({}) == 8
    assert threads.process_share({"PYTEST_XDIST_WORKER_COUNT": "3"}) == 2
    assert threads.process_share({"PYTEST_XDIST_WORKER_COUNT": "16"}) == 1


def test_environment_defaults_never_override_the_user(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threads, "usable_cpus", lambda: 4)
    env = {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "ACTIVE"}
    added = threads.configure_environment(env)
    assert env["OMP_NUM_THREADS"] == "1" and env["OMP_WAIT_POLICY"] == "ACTIVE"  # the user's choice
    assert "GOMP_SPINCOUNT" not in env  # it would override the user's wait policy
    assert added == {"MKL_NUM_THREADS": "4", "OPENBLAS_NUM_THREADS": "4", "RAYON_NUM_THREADS": "4"}
    fresh: dict[str, str] = {}
    threads.configure_environment(fresh)
    assert fresh["GOMP_SPINCOUNT"] == threads.SPIN_COUNT and fresh["OMP_NUM_THREADS"] == "4"


def test_policy_off_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {threads.POLICY_ENV: "0"}
    assert threads.configure_environment(env) == {} and env == {threads.POLICY_ENV: "0"}
    monkeypatch.setenv(threads.POLICY_ENV, "0")
    assert threads.size_torch(FakeTorch(8)) is None


class FakeTorch:
    def __init__(self, count: int) -> None:
        self.count = count

    def get_num_threads(self) -> int:
        return self.count

    def set_num_threads(self, count: int) -> None:
        self.count = count


def test_size_torch_respects_a_users_omp_num_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in POLICY_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(threads, "_set_here", {})
    monkeypatch.setattr(threads, "usable_cpus", lambda: 2)
    torch = FakeTorch(64)  # torch sized to the host, inside a 2-CPU container
    assert threads.size_torch(torch) == 2 and torch.count == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    torch = FakeTorch(3)
    assert threads.size_torch(torch) is None and torch.count == 3  # the user's choice stands
    # ...but a value this module set itself (too late for libgomp) does not count as the user's
    monkeypatch.delenv("OMP_NUM_THREADS")
    threads.configure_environment()
    torch = FakeTorch(64)
    assert threads.size_torch(torch) == 2 and torch.count == 2


def _spin_count(code: str, **extra: str) -> str:
    """libgomp's spin count as it reports it (``OMP_DISPLAY_ENV=VERBOSE``) in a fresh process."""
    env = {k: v for k, v in os.environ.items() if k not in POLICY_VARS}
    env.update(OMP_DISPLAY_ENV="VERBOSE", **extra)
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    lines = [line.strip() for line in run.stderr.splitlines() if "GOMP_SPINCOUNT" in line]
    if not lines:
        pytest.skip("this torch build does not use GNU libgomp")
    return lines[0]


def test_the_transformers_backend_makes_libgomp_threads_sleep() -> None:
    """Created before torch is imported (as the gate does), the backend's environment reaches
    libgomp: idle threads spin 3,000 times before they sleep, not 300,000."""
    pytest.importorskip("torch", reason="torch not installed: pip install torch==2.13.0 -e .[torch]")
    code = "from pytest_ftgate.backends.transformers import TransformersBackend; TransformersBackend(); import torch"
    ours = f"GOMP_SPINCOUNT = '{threads.SPIN_COUNT}'"
    assert _spin_count(code) == ours
    assert _spin_count(code, **{threads.POLICY_ENV: "0"}) != ours
    # After torch is loaded the wait policy can no longer change (libgomp read it at load)
    late = "import torch; from pytest_ftgate import threads; threads.configure_environment()"
    assert _spin_count(late) != ours


def test_size_torch_on_real_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    torch: Any = pytest.importorskip("torch", reason="torch not installed: pip install torch==2.13.0 -e .[torch]")
    for name in POLICY_VARS:
        monkeypatch.delenv(name, raising=False)
    before = torch.get_num_threads()
    monkeypatch.setattr(threads, "usable_cpus", lambda: 1)
    try:
        assert threads.size_torch(torch) == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_a_gating_pytest_run_sets_the_policy_before_a_conftest_imports_torch(pytester: pytest.Pytester) -> None:
    """The plugin applies the policy before conftests load, so a conftest that imports torch first
    still gets short spins; a run without ftgate options is left alone."""
    pytest.importorskip("torch")
    pytester.makeconftest("import torch\ntorch.ones(4).sum()\n")
    pytester.makepyfile("def test_nothing():\n    pass\n")
    for name in POLICY_VARS:
        pytester._monkeypatch.delenv(name, raising=False)
    pytester._monkeypatch.setenv("OMP_DISPLAY_ENV", "VERBOSE")

    def spin(*args: str) -> list[str]:
        run = pytester.runpytest_subprocess("-s", "-p", "no:randomly", *args)  # -s: libgomp speaks on stderr
        return [line.strip() for line in run.errlines if "GOMP_SPINCOUNT" in line]

    ours = f"GOMP_SPINCOUNT = '{threads.SPIN_COUNT}'"
    gated = spin("--ftgate-limit=5")
    if not gated:
        pytest.skip("this torch build does not use GNU libgomp")
    assert gated[0] == ours
    assert spin()[0] != ours
