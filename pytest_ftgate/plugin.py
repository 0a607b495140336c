"""pytest hooks and fixtures of ftgate. The engine lives in ``gate``; this module only wires it."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Generator
from typing import Any

import pytest

from pytest_ftgate import options
from pytest_ftgate.errors import ConfigError, FtgateError
from pytest_ftgate.marker import MARKER, MARKER_HELP, GateSpec, parse_marker

BENCHMARK_PARAM = "ftgate_benchmark"
_SETTINGS = pytest.StashKey["options.Settings"]()


def pytest_addoption(parser: pytest.Parser) -> None:
    """Register the ``--ftgate-*`` options and their ini keys."""
    options.addoptions(parser)


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    """Add ``pytest_ftgate_make_backend``."""
    from pytest_ftgate import newhooks

    pluginmanager.add_hookspecs(newhooks)


def pytest_configure(config: pytest.Config) -> None:
    """Register the marker and validate the options before anything is collected or loaded."""
    config.addinivalue_line("markers", MARKER_HELP)
    try:
        settings = options.read_settings(config)
        if settings.adapter is not None and settings.candidate is not None:
            raise ConfigError(f"give {options.ADAPTER} or {options.CANDIDATE}, not both")
        if settings.adapter is not None:
            from pytest_ftgate.adapters import inspect_adapter

            inspect_adapter(settings.adapter)
    except FtgateError as exc:
        raise pytest.UsageError(str(exc)) from None
    config.stash[_SETTINGS] = settings


@pytest.hookimpl(trylast=True)
def pytest_ftgate_make_backend(name: str, config: pytest.Config) -> Any:
    """ftgate's own registry: the last resort after any conftest or plugin implementation."""
    from pytest_ftgate.backends import create_backend

    return create_backend(name, base_url=config.stash[_SETTINGS].base_url)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Validate ``@pytest.mark.ftgate`` and give the list form one test per benchmark."""
    marker = metafunc.definition.get_closest_marker(MARKER)
    if marker is None:
        return
    where = metafunc.definition.nodeid
    try:
        spec = parse_marker(marker.args, dict(marker.kwargs), where)
    except ConfigError as exc:
        raise pytest.UsageError(str(exc)) from None
    if "ftgate_comparison" not in metafunc.fixturenames:
        metafunc.fixturenames.append("ftgate_comparison")  # the plugin checks thresholds itself
    if spec.listed:
        if BENCHMARK_PARAM not in metafunc.fixturenames:
            metafunc.fixturenames.append(BENCHMARK_PARAM)
        metafunc.parametrize(BENCHMARK_PARAM, spec.benchmarks, ids=list(spec.benchmarks))


def _spec(item: pytest.Item) -> GateSpec | None:
    """The validated marker of a test (validated once already at collection)."""
    marker = item.get_closest_marker(MARKER)
    return None if marker is None else parse_marker(marker.args, dict(marker.kwargs), item.nodeid)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    """After the test body passes, apply the marker's thresholds to the comparison."""
    result = yield
    spec = _spec(item)
    if spec is not None and isinstance(item, pytest.Function):
        comparison = item.funcargs.get("ftgate_comparison")
        if comparison is not None:
            strict = spec.strict if spec.strict is not None else item.config.stash[_SETTINGS].strict
            verdict = comparison.verdict(max_drop=spec.max_drop, min_gain=spec.min_gain, strict=strict)
            item.user_properties.append(("ftgate_verdict", verdict.outcome))
            if not verdict.passed:
                detail = comparison.failure_detail()
                pytest.fail(verdict.reason + ("\n" + detail if detail else ""), pytrace=False)
    return result


def _guarded(produce: Callable[[], Any]) -> Any:
    """Run ``produce``; an FtgateError becomes one readable line instead of a traceback."""
    __tracebackhide__ = True
    try:
        return produce()
    except FtgateError as exc:
        error = exc
    pytest.fail(f"ftgate: {error}", pytrace=False)


@pytest.fixture(scope="session")
def ftgate(request: pytest.FixtureRequest) -> Any:
    """The session's ``Gate``, built from the ``--ftgate-*`` options."""
    from pytest_ftgate.gate import Gate

    config = request.config
    settings = config.stash[_SETTINGS]
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    progress = None
    if reporter is not None and config.get_verbosity() >= 0 and not hasattr(config, "workerinput"):

        def progress(line: str) -> None:
            # Shown live, like pytest's live logging: not swallowed by output capture.
            with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
                reporter.write_line(f"ftgate: {line}")

    return _guarded(
        lambda: Gate(
            **settings.gate_kwargs(),
            progress=progress,
            make_backend=lambda name: config.hook.pytest_ftgate_make_backend(name=name, config=config),
        )
    )


@pytest.fixture(scope="session")
def ftgate_base_model(ftgate: Any) -> Any:
    """The loaded base ``Model``."""
    return _guarded(lambda: ftgate.base_model)


@pytest.fixture(scope="session")
def ftgate_tuned_model(ftgate: Any) -> Any:
    """Base + adapter (or the candidate); skips the test when neither was given."""
    if not ftgate.has_tuned:
        pytest.skip(f"no fine-tune to gate: pass {options.ADAPTER}=DIR or {options.CANDIDATE}=MODEL")
    return _guarded(lambda: ftgate.tuned_model)


@pytest.fixture
def ftgate_benchmark(request: pytest.FixtureRequest) -> str:
    """The benchmark of this test's marker (parametrized by ``pytest_generate_tests``)."""
    spec = _spec(request.node)
    if spec is None:
        raise pytest.UsageError(f'{request.node.nodeid}: ftgate_comparison needs @pytest.mark.ftgate("benchmark")')
    return spec.benchmarks[0]


@pytest.fixture
def ftgate_snapshot(snapshot: Any) -> Any:
    """syrupy's ``snapshot`` with ftgate's JSON extension (what stored baselines use)."""
    from pytest_ftgate.snapshot import FtgateSnapshotExtension

    return snapshot.use_extension(FtgateSnapshotExtension)


@pytest.fixture
def ftgate_comparison(
    request: pytest.FixtureRequest, ftgate: Any, ftgate_tuned_model: Any, ftgate_benchmark: str
) -> Any:
    """Base vs tuned on this test's benchmark, paired on the same examples. The base side comes
    from the stored baseline snapshot when it matches (recorded on the first run)."""
    spec = _spec(request.node)
    mode = spec.mode if spec is not None else None
    if not request.config.pluginmanager.has_plugin("syrupy"):
        return _guarded(lambda: ftgate.compare(ftgate_benchmark, mode))
    from pytest_ftgate.snapshot import compare_with_baseline

    snapshot = request.getfixturevalue("snapshot")
    return _guarded(lambda: compare_with_baseline(ftgate, ftgate_benchmark, snapshot, mode))
