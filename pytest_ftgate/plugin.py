"""pytest hooks and fixtures of ftgate. The engine lives in ``gate``; this module only wires it."""

from __future__ import annotations

import contextlib
import dataclasses
import time
import warnings
from collections.abc import Callable, Generator
from typing import Any

import pytest

from pytest_ftgate import options, reporting
from pytest_ftgate.errors import ConfigError, FtgateError, FtgateWarning
from pytest_ftgate.marker import MARKER, MARKER_HELP, GateSpec, parse_marker
from pytest_ftgate.results import Comparison, Verdict
from pytest_ftgate.stats import EarlyStopPolicy
from pytest_ftgate.text import safe
from pytest_ftgate.xdist_compat import suffixes_for_scheduler

BENCHMARK_PARAM = "ftgate_benchmark"
XDIST_GROUP = "ftgate"
_SETTINGS = pytest.StashKey["options.Settings"]()
_RECORDS = pytest.StashKey["list[reporting.GateRecord]"]()  # gated tests of this process (+ workers' on the controller)
_RECORD = pytest.StashKey["reporting.GateRecord"]()  # on an item: its record, to note the test's outcome
_SPEC = pytest.StashKey["GateSpec | None"]()  # on an item: its marker, parsed once, defaults applied
_STARTED = pytest.StashKey[float]()
_WRITTEN = pytest.StashKey["list[tuple[str, str]]"]()  # (what, path) of the report files written
_WRITE_ERRORS = pytest.StashKey["list[str]"]()  # report files that could not be written
_FLIPS = pytest.StashKey["dict[str, list[dict[str, Any]]]"]()  # --ftgate-flips: node id -> its rows
_CHECKPOINTS = pytest.StashKey["list[Any]"]()  # the adapter's checkpoints (pytest_ftgate.checkpoints), in order
_JUDGED = pytest.StashKey[Any]()  # on an item, --ftgate-pick=last-passing: its checkpoints judged (pick.Judged)
_PICK = pytest.StashKey[Any]()  # on the controller, last-passing: the run's pick (pick.Pick)
WORKEROUTPUT_KEY = "ftgate_records"
WORKEROUTPUT_FLIPS = "ftgate_flips"
SHOWN_LOST = 3  # lost examples in a failure message


def pytest_addoption(parser: pytest.Parser) -> None:
    """Register the ``--ftgate-*`` options and their ini keys."""
    options.addoptions(parser)


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> int | None:
    """``--ftgate-list``: list the benchmarks, then exit; like ``--fixtures``, after collection, so
    those a conftest or test module registers are listed too."""
    if not config.getoption(options.ini_name(options.LIST)):
        return None
    from _pytest.main import wrap_session  # what --fixtures uses: configure, collect, unconfigure

    return int(wrap_session(config, _list_benchmarks))


def _list_benchmarks(config: pytest.Config, session: pytest.Session) -> int:
    from pytest_ftgate.listing import benchmark_table

    session.perform_collect()
    writer = config.pluginmanager.get_plugin("terminalreporter")
    writer.section("ftgate benchmarks")
    for line in benchmark_table(config.stash[_SETTINGS].data, options.option_name):
        writer.write_line(safe(line))
    return 0


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config, parser: pytest.Parser, args: list[str]) -> None:
    """In a run that gates (an ``--ftgate-*`` option, or an adapter or candidate in the ini file),
    size the CPU libraries' thread pools before any conftest can import torch (``threads``): the
    OpenMP runtime reads its settings once, when it loads. Other runs are left alone."""
    from pytest_ftgate import threads

    keys = (options.ini_name(options.ADAPTER), options.ini_name(options.CANDIDATE))
    if any(arg.startswith("--ftgate-") for arg in args) or any(early_config.getini(k) for k in keys):
        threads.configure_environment()


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
        if settings.reference is not None and settings.adapter is None:
            raise ConfigError(f"{options.REFERENCE} is compared with an adapter: give {options.ADAPTER} too")
        if settings.pick != "final" and settings.adapter is None:
            raise ConfigError(f"{options.PICK}={settings.pick} picks among the checkpoints of {options.ADAPTER}: give it")
        checkpoints: list[Any] = []
        if settings.adapter is not None:  # every checkpoint inspected before anything loads
            from pytest_ftgate.checkpoints import one_checkpoint, resolve_checkpoints

            checkpoints = resolve_checkpoints(settings.adapter)
            if settings.reference is not None:
                one_checkpoint(resolve_checkpoints(settings.reference), settings.reference, "reference")
        if settings.plot is not None and not hasattr(config, "workerinput"):
            reporting.require_matplotlib()  # say so now, not after an hour of evaluation
    except FtgateError as exc:
        raise pytest.UsageError(exc.render(options.option_name)) from None
    config.stash[_SETTINGS] = settings
    config.stash[_RECORDS] = []
    config.stash[_WRITTEN] = []
    config.stash[_WRITE_ERRORS] = []
    config.stash[_FLIPS] = {}
    config.stash[_CHECKPOINTS] = checkpoints
    config.stash[_STARTED] = time.time()
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(_XdistHooks(config), "ftgate-xdist")


class _XdistHooks:
    """Registered only when pytest-xdist is installed (its hook is unknown otherwise)."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config

    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        """Controller: merge the records a worker sent home through ``workeroutput``."""
        data = getattr(node, "workeroutput", None) or {}
        records = self.config.stash[_RECORDS]
        records.extend(reporting.GateRecord.from_dict(item) for item in data.get(WORKEROUTPUT_KEY, []))
        self.config.stash[_FLIPS].update(data.get(WORKEROUTPUT_FLIPS, {}))

    @pytest.hookimpl(wrapper=True)  # around xdist's worker hook, which sends the ids to the scheduler
    def pytest_collection_finish(self, session: pytest.Session) -> Generator[None, None, None]:
        """Worker under ``--dist loadgroup``: the scheduler gets grouped ids with the ``@group``
        suffix pytest 9.2 drops; the items keep their ids (xdist_compat)."""
        with suffixes_for_scheduler(session.config, session.items):
            return (yield)


@pytest.hookimpl(trylast=True)
def pytest_ftgate_make_backend(name: str, config: pytest.Config) -> Any:
    """ftgate's own registry: the last resort after any conftest or plugin implementation."""
    from pytest_ftgate.backends import create_backend

    return create_backend(name, base_url=config.stash[_SETTINGS].base_url)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Validate ``@pytest.mark.ftgate`` and give the list form one test per benchmark.

    A bad marker is a collection error of its module that shows the message alone
    (``Collector.CollectError``), not a traceback through pytest's and pluggy's frames."""
    marker = metafunc.definition.get_closest_marker(MARKER)
    if marker is None:
        return
    where = metafunc.definition.nodeid
    try:
        spec = parse_marker(marker.args, dict(marker.kwargs), where)
    except ConfigError as exc:
        raise pytest.Collector.CollectError(str(exc)) from None
    if spec.listed:
        if BENCHMARK_PARAM not in metafunc.fixturenames:
            metafunc.fixturenames.append(BENCHMARK_PARAM)
        metafunc.parametrize(BENCHMARK_PARAM, spec.benchmarks, ids=list(spec.benchmarks))


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every gated test computes its comparison, even with an empty body: the fixture is added
    here, after parametrization has pruned each item's fixture closure. Gated tests also join
    one ``xdist_group``: under ``-n N --dist loadgroup`` they share one worker, so the model is
    loaded (and held in memory) once, while other tests spread out."""
    xdist = config.pluginmanager.hasplugin("xdist")
    for item in items:
        if not isinstance(item, pytest.Function) or _spec(item) is None:
            continue
        if "ftgate_comparison" not in item.fixturenames:
            item.fixturenames.append("ftgate_comparison")
        if xdist and item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(XDIST_GROUP))


def _spec(item: pytest.Item) -> GateSpec | None:
    """The test's marker, parsed once and stashed on the item, with the session's defaults: its
    ``strict`` resolved, and the project-wide ``max_drop`` (``ftgate_max_drop``) for a marker
    that sets no threshold. None for a test without the marker."""
    if _SPEC not in item.stash:
        marker = item.get_closest_marker(MARKER)
        spec = None
        if marker is not None:
            try:  # validated at collection already, unless a hook added the marker later
                spec = parse_marker(marker.args, dict(marker.kwargs), item.nodeid)
            except ConfigError as exc:
                raise pytest.UsageError(str(exc)) from None
            settings = item.config.stash[_SETTINGS]
            if spec.strict is None:
                spec = dataclasses.replace(spec, strict=settings.strict)
            if not spec.gated and settings.max_drop is not None:
                spec = dataclasses.replace(spec, max_drop=settings.max_drop)
        item.stash[_SPEC] = spec
    return item.stash[_SPEC]


def _benchmark(item: pytest.Item, spec: GateSpec) -> str:
    """The benchmark of this test: its parameter in the list form, else the marker's one name."""
    callspec = getattr(item, "callspec", None)
    if callspec is not None and BENCHMARK_PARAM in callspec.params:
        return str(callspec.params[BENCHMARK_PARAM])
    return spec.benchmarks[0]


def _keep(item: pytest.Item, record: reporting.GateRecord) -> None:
    """Keep a test's record: for the reports, for its outcome, and as JUnit XML properties."""
    item.stash[_RECORD] = record
    item.config.stash[_RECORDS].append(record)
    item.user_properties.extend(reporting.junit_properties(record))  # includes ftgate_verdict


def _no_threshold_warning(item: pytest.Item, spec: GateSpec) -> None:
    """A marker without a threshold measures and never fails: say so, once per test, at the test."""
    names = spec.benchmarks[0] if not spec.listed else list(spec.benchmarks)
    message = (
        f"{safe(item.nodeid)}: @pytest.mark.ftgate({names!r}) has no threshold, so it only measures and never "
        "fails. Make it a gate: add max_drop=POINTS (or min_gain=POINTS) to the marker, or set a "
        f"project-wide default with ftgate_max_drop in the ini file (or {options.MAX_DROP}=POINTS)."
    )
    lineno = item.location[1]
    warnings.warn_explicit(FtgateWarning(message), FtgateWarning, str(item.path), (lineno or 0) + 1)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    """Record the gate (reports, JUnit XML properties), then, after the test body passes, apply the
    marker's thresholds. The record is made before the body runs (the comparison fixture is set up
    already), so a test that fails on a custom assertion is still reported."""
    comparison: Comparison | None = None
    verdict: Verdict | None = None
    spec = _spec(item)
    if spec is not None and isinstance(item, pytest.Function):
        found = item.funcargs.get("ftgate_comparison")
        if isinstance(found, Comparison):
            comparison = found
            strict = bool(spec.strict)
            verdict = comparison.verdict(max_drop=spec.max_drop, min_gain=spec.min_gain, strict=strict)
            _keep(
                item,
                reporting.GateRecord.from_comparison(
                    comparison,
                    verdict,
                    nodeid=item.nodeid,
                    max_drop=spec.max_drop,
                    min_gain=spec.min_gain,
                    strict=strict,
                ),
            )
            if _JUDGED in item.stash:  # last-passing: every checkpoint's comparison and verdict
                item.stash[_RECORD].curve = item.stash[_JUDGED].curve
            if item.config.stash[_SETTINGS].flips is not None:
                item.config.stash[_FLIPS][item.nodeid] = reporting.flip_rows(item.nodeid, comparison)
            if verdict.outcome == "measured":
                _no_threshold_warning(item, spec)
    result = yield
    if comparison is not None and verdict is not None and not verdict.passed:
        pytest.fail(_failure_message(item, comparison, verdict), pytrace=False)
    return result


def _failure_message(item: pytest.Item, comparison: Comparison, verdict: Verdict) -> str:
    """The verdict, the first lost examples, and where the others are (or how to get them)."""
    lines = [verdict.reason]
    if _JUDGED in item.stash:
        lines.append(f"No checkpoint passes this gate ({options.PICK}=last-passing): {item.stash[_JUDGED].outcomes()}")
    detail = comparison.failure_detail(SHOWN_LOST)
    if detail:
        lines.append(detail)
    more = len(comparison.lost) - SHOWN_LOST
    if more > 0:
        flips = item.config.stash[_SETTINGS].flips
        where = f"all of them are in {safe(flips)}" if flips else f"{options.FLIPS}=PATH writes all of them"
        lines.append(f"  ... and {more} more lost ({where})")
    return "\n".join(lines)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    """Note the test's own outcome on its record (a custom assertion can fail a passing gate). A
    gated test whose comparison could not be computed (its setup or the gate raised: an adapter
    that does not fit, a fixture that failed) gets an ``error`` record: no report calls it a pass."""
    rep = yield
    if rep.when == "call" and _RECORD in item.stash:
        item.stash[_RECORD].test_outcome = rep.outcome
    elif (
        rep.failed
        and rep.when in ("setup", "call")
        and _RECORD not in item.stash
        and call.excinfo is not None
        and isinstance(item, pytest.Function)
    ):
        spec = _spec(item)
        if spec is not None:
            name = _benchmark(item, spec)
            _keep(
                item,
                reporting.GateRecord.from_error(
                    nodeid=item.nodeid,
                    benchmark=name,
                    title=_title(name),
                    error=_error_text(call.excinfo),
                    max_drop=spec.max_drop,
                    min_gain=spec.min_gain,
                    strict=bool(spec.strict),
                    confidence=item.config.stash[_SETTINGS].confidence,
                ),
            )
    return rep


def _error_text(excinfo: pytest.ExceptionInfo[BaseException]) -> str:
    """The one line pytest shows for an error: our own message, or ``Type: message``."""
    if isinstance(excinfo.value, pytest.fail.Exception):
        return str(excinfo.value.msg).removeprefix("ftgate: ")
    return excinfo.exconly().strip()


def _title(name: str) -> str:
    from pytest_ftgate.benchmarks import get_benchmark

    try:
        return get_benchmark(name).title or name
    except ConfigError:
        return name


def pytest_sessionfinish(session: pytest.Session) -> None:
    """An xdist worker sends its records home; the controller (or a plain run) writes the files.

    Runs before the terminal summary, which lists the files written.
    """
    config = session.config
    if _RECORDS not in config.stash:
        return
    if hasattr(config, "workeroutput"):  # an xdist worker: plain data only
        config.workeroutput[WORKEROUTPUT_KEY] = [record.to_dict() for record in config.stash[_RECORDS]]
        config.workeroutput[WORKEROUTPUT_FLIPS] = config.stash[_FLIPS]
        return
    settings = config.stash[_SETTINGS]
    gathered: list[reporting.GateRecord] = config.stash[_RECORDS]
    records = reporting.collate(gathered)
    meta = reporting.make_meta(
        started=config.stash[_STARTED],
        backend=settings.backend,
        base=settings.base,
        adapter=settings.adapter,
        candidate=settings.candidate,
        confidence=settings.confidence,
        limit=settings.limit,
        mode=settings.mode,
        strict=settings.strict,
        reference=settings.reference,
        pick=settings.pick,
    )
    pick_data = None
    if settings.pick == "last-passing":  # the pick, from every test's record (the workers' too)
        from pytest_ftgate import pick

        chosen = config.stash[_PICK] = pick.choose(config.stash[_CHECKPOINTS], records)
        pick_data = chosen.to_dict()
        if chosen.checkpoint is None and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
    outputs: list[tuple[str, str | None, Callable[[str], object]]] = [
        ("JSON report", settings.report, lambda path: reporting.write_json(path, records, meta=meta, pick=pick_data)),
        ("Markdown summary", settings.markdown, lambda path: reporting.write_markdown(path, records, meta=meta)),
        ("chart", settings.plot, lambda path: reporting.write_plot(path, records)),
        ("lost and gained examples", settings.flips, lambda path: reporting.write_flips(path, _flip_rows(config))),
    ]
    for what, path, write in outputs:
        if path is None:
            continue
        try:
            write(path)
        except (OSError, FtgateError) as exc:  # a report that cannot be written must not hide the results
            config.stash[_WRITE_ERRORS].append(f"could not write the {what} to {path}: {exc}")
        else:
            config.stash[_WRITTEN].append((what, path))


def _flip_rows(config: pytest.Config) -> list[dict[str, Any]]:
    return [row for rows in config.stash[_FLIPS].values() for row in rows]


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """One table for the whole run, printed once: by the xdist controller or the single process."""
    if hasattr(config, "workerinput") or _RECORDS not in config.stash:
        return
    gathered: list[reporting.GateRecord] = config.stash[_RECORDS]
    written: list[tuple[str, str]] = config.stash[_WRITTEN]
    errors: list[str] = config.stash[_WRITE_ERRORS]
    reporting.write_summary(terminalreporter, reporting.collate(gathered), written=written, errors=errors)
    if _PICK in config.stash:  # one plain line CI can read: the checkpoint to promote
        terminalreporter.write_line(safe(config.stash[_PICK].line()))


def _guarded(produce: Callable[[], Any]) -> Any:
    """Run ``produce``; an FtgateError becomes one readable line instead of a traceback (control
    characters from data in it escaped)."""
    __tracebackhide__ = True
    try:
        return produce()
    except FtgateError as exc:
        error = exc
    pytest.fail(f"ftgate: {safe(error.render(options.option_name), newlines=True)}", pytrace=False)


@pytest.fixture(scope="session")
def ftgate(request: pytest.FixtureRequest) -> Any:
    """The session's ``Gate``, built from the ``--ftgate-*`` options."""
    from pytest_ftgate.gate import Gate

    config = request.config
    settings = config.stash[_SETTINGS]
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    progress: Any = False  # quiet under -q and on xdist workers
    if reporter is not None and config.get_verbosity() >= 0 and not hasattr(config, "workerinput"):

        def progress(line: str) -> None:
            # Shown live, like pytest's live logging: not swallowed by output capture.
            with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
                reporter.write_line(f"ftgate: {safe(line)}")

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
    settings = request.config.stash[_SETTINGS]
    mode = spec.mode if spec is not None else None
    early_stop = None
    if settings.early_stop and spec is not None and spec.gated:
        early_stop = EarlyStopPolicy(spec.max_drop, spec.min_gain, bool(spec.strict))
    said = len(ftgate.notes)  # what the gate notes while computing this comparison is its notes
    if not request.config.pluginmanager.has_plugin("syrupy"):
        comparison = _guarded(lambda: ftgate.compare(ftgate_benchmark, mode, early_stop=early_stop))
    else:
        from pytest_ftgate.snapshot import compare_with_baseline

        snapshot = request.getfixturevalue("snapshot")
        comparison = _guarded(lambda: compare_with_baseline(ftgate, ftgate_benchmark, snapshot, mode, early_stop))
    if settings.pick == "last-passing" and len(ftgate.checkpoints) > 1:
        comparison = _judge_checkpoints(request.node, ftgate, ftgate_benchmark, spec, mode, early_stop, comparison)
    comparison.notes += [note for note in dict.fromkeys(ftgate.notes[said:]) if note not in comparison.notes]
    return comparison


def _judge_checkpoints(
    item: pytest.Item, gate: Any, benchmark: str, spec: GateSpec | None, mode: str | None,
    early_stop: EarlyStopPolicy | None, final: Comparison,
) -> Comparison:  # fmt: skip
    """``--ftgate-pick=last-passing``: every checkpoint compared (the base side as for the final
    one, whose stored baseline ``final`` recorded or audited) and judged; the comparison the test
    reports is the last one passing its gate (``pick.judge``)."""
    from pytest_ftgate import pick

    errors: list[Any] = []
    points = _guarded(lambda: gate.curve(benchmark, mode, early_stop=early_stop, errors=errors))
    if not points:
        shown = "; ".join(f"{c.name}: {exc.render(options.option_name)}" for c, exc in errors)
        pytest.fail(f"ftgate: no checkpoint could be compared: {safe(shown, newlines=True)}", pytrace=False)
    judged = pick.judge(
        points, errors, max_drop=spec.max_drop if spec else None, min_gain=spec.min_gain if spec else None,
        strict=bool(spec.strict) if spec else False, render=lambda exc: exc.render(options.option_name),
    )  # fmt: skip
    item.stash[_JUDGED] = judged
    if judged.comparison.baseline_note is None:
        judged.comparison.baseline_note = final.baseline_note
    return judged.comparison  # type: ignore[no-any-return]
