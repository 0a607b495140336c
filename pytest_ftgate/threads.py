"""Thread pools sized to the CPUs this process may use, with waiting threads that soon sleep.

On a shared machine (a CI runner, a laptop with other jobs) the CPU libraries' defaults multiply
run time: torch's OpenMP pool (GNU libgomp) has one thread per core and its idle threads spin
for milliseconds between parallel regions, taking CPU time from the busy thread of the same
process and from everyone else; in a container limited by a CPU quota the pools are sized to the
host's cores, not the quota. The policy here:

- ``usable_cpus()``: the CPUs this process may run on (``sched_getaffinity``), capped by the
  cgroup CPU quota (``cpu.max``, cgroup v2; ``cpu.cfs_quota_us``, v1) of its cgroup and its
  parents; ``process_share()`` divides them between pytest-xdist workers.
- ``configure_environment()``: sets ``GOMP_SPINCOUNT=3000`` (idle OpenMP threads spin a few
  microseconds, then sleep; libgomp's default is 300,000 spins, milliseconds) and ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` / ``OPENBLAS_NUM_THREADS`` /
  ``RAYON_NUM_THREADS`` (tokenizers) to ``process_share()``, each only when not set already: a
  user's value always wins (a user's ``OMP_WAIT_POLICY`` counts as a choice of spin count). The
  spin count was measured (``benchmarks/load_check.py``, RESULTS.md): ``OMP_WAIT_POLICY=PASSIVE``
  (no spinning) cut the slowdown beside two busy processes but made the idle run ~30% slower;
  3,000 spins kept the idle time and cut the slowdown further. These libraries read the environment once, when they are loaded, so
  this must run before ``torch`` or ``numpy`` is imported; child processes inherit it.
- ``size_torch(torch)``: ``torch.set_num_threads(process_share())`` unless the user set
  ``OMP_NUM_THREADS``: it works after import too (the wait policy does not).

``FTGATE_THREAD_POLICY=0`` turns all of this off (the libraries' own defaults), e.g. to measure
the difference (``benchmarks/load_check.py``). No heavy imports here.
"""

from __future__ import annotations

import math
import os
from collections.abc import MutableMapping
from pathlib import Path, PurePosixPath
from typing import Any

POLICY_ENV = "FTGATE_THREAD_POLICY"  # "0": leave thread pools and wait policies to the libraries
SPIN_COUNT = "3000"  # libgomp spins of an idle thread before it sleeps (default 300,000)
COUNT_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "RAYON_NUM_THREADS")
CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")

_set_here: dict[str, str] = {}  # what configure_environment set in os.environ (not the user)


def enabled(environ: MutableMapping[str, str] | None = None) -> bool:
    return (os.environ if environ is None else environ).get(POLICY_ENV, "1") != "0"


def affinity_cpus() -> int:
    """CPUs this process may be scheduled on (all of them where affinity is unknown)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def _quota(text: str) -> float | None:
    """CPUs granted by a cgroup v2 ``cpu.max`` line (``"150000 100000"`` -> 1.5; ``"max ..."`` -> None)."""
    parts = text.split()
    if len(parts) != 2 or parts[0] == "max":
        return None
    try:
        quota, period = int(parts[0]), int(parts[1])
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def cgroup_cpus(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> int | None:
    """The smallest CPU quota on this process's cgroup and its parents, rounded up; None when
    unlimited or unknown. cgroup v2 (``cpu.max``) first, then v1 (``cpu/cpu.cfs_quota_us``)."""
    own = ""
    for line in (_read(proc_cgroup) or "").splitlines():
        if line.startswith("0::"):  # the v2 hierarchy
            own = line[3:].strip()
    parts = [p for p in PurePosixPath(own).parts if p != "/"]
    limits = []
    for depth in range(len(parts), -1, -1):  # own cgroup, its parents, then the root of the mount
        text = _read(root.joinpath(*parts[:depth], "cpu.max"))
        if text is not None and (quota := _quota(text)) is not None:
            limits.append(quota)
    if not limits:
        v1_quota, v1_period = _read(root / "cpu" / "cpu.cfs_quota_us"), _read(root / "cpu" / "cpu.cfs_period_us")
        if v1_quota is not None and v1_period is not None:
            quota = _quota(f"{v1_quota.strip()} {v1_period.strip()}")
            if quota is not None:
                limits.append(quota)
    return max(1, math.ceil(min(limits) - 1e-9)) if limits else None


def usable_cpus() -> int:
    """CPUs this process may use: its affinity, capped by its cgroup's CPU quota."""
    limit = cgroup_cpus()
    cpus = affinity_cpus()
    return min(cpus, limit) if limit is not None else cpus


def process_share(environ: MutableMapping[str, str] | None = None) -> int:
    """``usable_cpus()`` divided between pytest-xdist workers (each runs its own models)."""
    environ = os.environ if environ is None else environ
    try:
        workers = max(1, int(environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1))
    except ValueError:
        workers = 1
    return max(1, usable_cpus() // workers)


def configure_environment(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Set the wait policy and thread counts in ``environ`` (default ``os.environ``) where they are
    not set yet; returns what it set. Call it before ``torch`` / ``numpy`` are imported."""
    environ = os.environ if environ is None else environ
    if not enabled(environ):
        return {}
    share = str(process_share(environ))
    wanted = dict.fromkeys(COUNT_VARS, share)
    if not environ.get("OMP_WAIT_POLICY"):  # the user's wait policy sets the spin count itself
        wanted["GOMP_SPINCOUNT"] = SPIN_COUNT
    added = {name: value for name, value in wanted.items() if not environ.get(name)}
    environ.update(added)
    if environ is os.environ:
        _set_here.update(added)
    return added


def size_torch(torch: Any) -> int | None:
    """``torch.set_num_threads(process_share())`` unless the user chose ``OMP_NUM_THREADS`` (or the
    policy is off); returns the count set, or None."""
    if not enabled():
        return None
    user = os.environ.get("OMP_NUM_THREADS")
    if user and _set_here.get("OMP_NUM_THREADS") != user:
        return None
    share = process_share()
    if torch.get_num_threads() != share:
        torch.set_num_threads(share)
    return share
