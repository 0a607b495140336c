"""Plugin behaviour through pytester, on a fake backend (the plugin's own logic, not a model)."""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from pytest_ftgate import options

GATE_TEST = """
import re

import pytest

@pytest.mark.ftgate("sentiment", max_drop=2.0)
def test_no_forgetting():
    pass
"""


def test_options_and_ini_keys_are_registered(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--help")
    for option in (
        options.ADAPTER,
        options.BASE,
        options.CANDIDATE,
        options.BACKEND,
        options.BASE_URL,
        options.LIMIT,
        options.DATA,
        options.CACHE,
        options.NO_CACHE,
        options.BATCH_SIZE,
        options.CONFIDENCE,
        options.REPORT,
        options.MARKDOWN,
        options.PLOT,
        options.MAX_DROP,
    ):
        result.stdout.fnmatch_lines([f"*{option}*"])
        result.stdout.fnmatch_lines([f"*{options.ini_name(option)} *"])


def test_marker_is_registered(pytester: pytest.Pytester) -> None:
    pytester.runpytest("--markers").stdout.fnmatch_lines(["@pytest.mark.ftgate(*max_drop*"])


def test_skipped_without_adapter(gate_project: pytest.Pytester) -> None:
    gate_project.makepyfile(GATE_TEST)
    result = gate_project.runpytest("-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*no fine-tune to gate: pass --ftgate-adapter=DIR*"])


def test_passes_when_answers_unchanged(gate_project: pytest.Pytester, fake_adapter: Callable[..., str]) -> None:
    gate_project.makepyfile(GATE_TEST)
    gate_project.runpytest(fake_adapter()).assert_outcomes(passed=1)


def test_fails_with_readable_message(gate_project: pytest.Pytester, fake_adapter: Callable[..., str]) -> None:
    gate_project.makepyfile(GATE_TEST)
    result = gate_project.runpytest(fake_adapter(fake_flips=6))
    result.assert_outcomes(failed=1)
    # 40 examples, 6 lost: 100.0 -> 85.0
    result.stdout.fnmatch_lines(
        [
            "*Sentiment dropped 15.0 points (100.0 -> 85.0) after fine-tuning; allowed 2.0. "
            "40 examples: 6 lost, 0 gained (95% interval*",
            "*lost s000*",
        ]
    )
    assert "Traceback" not in result.stdout.str()


def test_ini_keys_work_like_options(gate_project: pytest.Pytester, fake_adapter_folder: Callable[..., Path]) -> None:
    adapter = fake_adapter_folder(fake_flips=6)
    gate_project.makeini(
        f"[pytest]\nftgate_backend = fake\nftgate_base = base\nftgate_adapter = {adapter}\nftgate_limit = 10\n"
    )
    gate_project.makepyfile(GATE_TEST)
    result = gate_project.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*10 examples: 2 lost*"])  # stratified 10 of 40 keeps some of the 6 flips


def test_min_gain(
    gate_project: pytest.Pytester, fake_adapter: Callable[..., str], sentiment_file: Callable[..., Path]
) -> None:
    sentiment_file(n=40, base_wrong=10)
    gate_project.makepyfile("""
        import pytest

        @pytest.mark.ftgate("sentiment", min_gain=5.0)
        def test_improves():
            pass

        @pytest.mark.ftgate("sentiment", min_gain=50.0)
        def test_improves_a_lot():
            pass
    """)
    result = gate_project.runpytest(fake_adapter(fake_fixes=True))
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*Sentiment gained 25.0 points (75.0 -> 100.0)*required gain 50*"])


def test_list_form_gives_one_test_per_benchmark(
    gate_project: pytest.Pytester, fake_adapter: Callable[..., str]
) -> None:
    gate_project.makeconftest(
        gate_project.path.joinpath("conftest.py").read_text()
        + """
pytest_ftgate.register_benchmark(
    pytest_ftgate.Benchmark.from_jsonl(
        "sentiment2", Path(__file__).parent / "sentiment.jsonl",
        system="One word.", template="{q}", answer="a", kind="label",
        choices=("positive", "negative", "neutral"), max_tokens=8,
    )
)
"""
    )
    gate_project.makepyfile("""
        import pytest

        @pytest.mark.ftgate(["sentiment", "sentiment2"], max_drop=2.0)
        def test_all(ftgate_comparison):
            assert ftgate_comparison.tuned.metrics["accuracy"] >= 0
    """)
    result = gate_project.runpytest("-v", fake_adapter())
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*test_all?sentiment? PASSED*", "*test_all?sentiment2? PASSED*"])


def test_custom_assertions_in_body(gate_project: pytest.Pytester, fake_adapter: Callable[..., str]) -> None:
    gate_project.makepyfile("""
        import pytest

        @pytest.mark.ftgate("sentiment", max_drop=50.0)
        def test_custom(ftgate_comparison):
            assert ftgate_comparison.tuned.metrics["accuracy"] >= 99, "too low"
    """)
    result = gate_project.runpytest(fake_adapter(fake_flips=6))
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*too low*"])


@pytest.mark.parametrize(
    ("marker", "message"),
    [
        ('"sentimnt", max_drop=2.0', "*unknown benchmark 'sentimnt'*did you mean 'sentiment'*"),
        ('"sentiment", max_dorp=2.0', "*unknown @pytest.mark.ftgate keyword 'max_dorp'. Did you mean 'max_drop'*"),
        ('"sentiment", max_drop="two"', "*max_drop must be a number of points*"),
        ("", "*takes one benchmark name or a list*"),
    ],
)
def test_marker_misuse_is_a_usage_error(gate_project: pytest.Pytester, marker: str, message: str) -> None:
    gate_project.makepyfile(f"""
        import pytest

        @pytest.mark.ftgate({marker})
        def test_x():
            pass
    """)
    result = gate_project.runpytest()
    assert result.ret != 0
    result.stdout.fnmatch_lines([message]) if "ERROR" in result.stdout.str() else result.stderr.fnmatch_lines([message])


@pytest.mark.parametrize("limit", ["0", "-3", "ten"])
def test_bad_limit_is_a_usage_error(gate_project: pytest.Pytester, limit: str) -> None:
    gate_project.makepyfile(GATE_TEST)
    result = gate_project.runpytest(f"{options.LIMIT}={limit}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*--ftgate-limit must be a positive integer, got *{limit.lstrip('-')}*"])


def test_missing_adapter_path_is_a_usage_error(gate_project: pytest.Pytester) -> None:
    gate_project.makepyfile(GATE_TEST)
    result = gate_project.runpytest(f"{options.ADAPTER}=nowhere/lora")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*adapter folder */nowhere/lora does not exist: check the path given to --ftgate-adapter*"]
    )


def test_folder_without_weights(gate_project: pytest.Pytester) -> None:
    (gate_project.path / "empty").mkdir()
    result = gate_project.runpytest(f"{options.ADAPTER}=empty")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*empty holds no adapter weights (adapters.safetensors or adapter_model.safetensors)*"]
    )


def test_corrupt_safetensors(gate_project: pytest.Pytester, fake_adapter_folder: Callable[..., Path]) -> None:
    folder = fake_adapter_folder()
    data = (folder / "adapters.safetensors").read_bytes()
    (folder / "adapters.safetensors").write_bytes(data[:-8])
    result = gate_project.runpytest(f"{options.ADAPTER}=lora")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*adapters.safetensors is truncated*re-save the adapter*"])


def test_pickle_adapter_refused(gate_project: pytest.Pytester) -> None:
    (gate_project.path / "peft").mkdir()
    (gate_project.path / "peft" / "adapter_model.bin").write_bytes(b"pickle")
    result = gate_project.runpytest(f"{options.ADAPTER}=peft")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*adapter_model.bin is a pickle file*refuses it*"])


def test_missing_base_folder(gate_project: pytest.Pytester, fake_adapter: Callable[..., str]) -> None:
    gate_project.makepyfile(GATE_TEST)
    result = gate_project.runpytest(fake_adapter(), f"{options.BASE}=./no-such-model")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*model folder */no-such-model does not exist: check --ftgate-base*"])
    assert "Traceback" not in result.stdout.str()


def test_adapter_error_at_load_is_reported_once_per_test(
    gate_project: pytest.Pytester, fake_adapter: Callable[..., str]
) -> None:
    gate_project.makepyfile(GATE_TEST)
    result = gate_project.runpytest(fake_adapter(fake_no_effect=True))
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*ftgate: adapter */lora has no effect*"])


def test_unknown_backend(gate_project: pytest.Pytester, fake_adapter: Callable[..., str]) -> None:
    gate_project.makepyfile(GATE_TEST)
    result = gate_project.runpytest(fake_adapter(), f"{options.BACKEND}=mxl")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*unknown ftgate backend 'mxl'. Did you mean 'mlx'?*"])


def test_cache_reused_on_second_run(gate_project: pytest.Pytester, fake_adapter: Callable[..., str]) -> None:
    gate_project.makepyfile(
        GATE_TEST
        + """

def test_calls():
    import conftest
    print("CALLS", conftest.CALLS["examples"])
"""
    )
    args = [fake_adapter(fake_flips=1), "-s", "-p", "no:randomly"]
    first = gate_project.runpytest(*args)
    first.stdout.fnmatch_lines(["*CALLS 80*"])  # 40 base + 40 tuned
    second = gate_project.runpytest(*args)
    second.stdout.fnmatch_lines(["*CALLS 0*"])
    no_cache = gate_project.runpytest(*args, options.NO_CACHE)
    no_cache.stdout.fnmatch_lines(["*CALLS 48*"])  # the base comes from the stored baseline; 8 audited


def test_xdist_two_workers(gate_project: pytest.Pytester, fake_adapter: Callable[..., str]) -> None:
    pytest.importorskip("xdist")
    gate_project.makepyfile(test_a=GATE_TEST, test_b=GATE_TEST.replace("test_no_forgetting", "test_other"))
    result = gate_project.runpytest("-n", "2", fake_adapter(fake_flips=6))
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(["*Sentiment dropped 15.0 points*"])


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["serial", "xdist"])
def test_reports_terminal_json_markdown_plot_junit(
    gate_project: pytest.Pytester, workers: list[str], fake_adapter: Callable[..., str]
) -> None:
    import json

    if importlib.util.find_spec("matplotlib") is None:
        pytest.skip("matplotlib is not installed")
    if workers and importlib.util.find_spec("xdist") is None:
        pytest.skip("pytest-xdist is not installed")
    gate_project.makepyfile(GATE_TEST)
    out = gate_project.path / "out"
    # In a subprocess: pytester drops the modules a test imported (matplotlib, numpy) when it ends,
    # and numpy's C extension cannot be imported twice in one process.
    result = gate_project.runpytest_subprocess(
        *workers,
        fake_adapter(fake_flips=6),
        f"{options.REPORT}={out / 'r.json'}",
        f"{options.MARKDOWN}={out / 'r.md'}",
        f"{options.PLOT}={out / 'r.png'}",
        f"--junitxml={out / 'junit.xml'}",
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*= ftgate =*",
            "benchmark*base*tuned*delta*95% CI*n*verdict*time",
            "Sentiment*100.0*85.0*-15.0*[[]-*40*fail*",
            "ftgate: Sentiment regressed",
            "*baseline above 70%: don't fine-tune*measured: regressed -15.0 (forgetting)",
            "ftgate: JSON report written to *r.json",
        ]
    )
    data = json.loads((out / "r.json").read_text())
    assert data["schema"] == "pytest-ftgate/report" and data["version"] == 1
    assert data["summary"]["failed"] == 1
    gate = data["gates"][0]
    assert (gate["benchmark"], gate["lost"], gate["test_outcome"]) == ("sentiment", 6, "failed")
    assert data["meta"]["adapter"].endswith("lora") and data["meta"]["backend"] == "fake"
    assert (out / "r.md").read_text().startswith("### \u274c ftgate: Sentiment regressed")
    junit = (out / "junit.xml").read_text()
    assert '<property name="ftgate_delta" value="-15.00"' in junit
    assert junit.count('name="ftgate_verdict"') == 1
    assert (out / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_custom_assertion_failure_still_reported(
    gate_project: pytest.Pytester, fake_adapter: Callable[..., str]
) -> None:
    gate_project.makepyfile(
        """
        import pytest

        @pytest.mark.ftgate("sentiment", max_drop=50.0)
        def test_custom(ftgate_comparison):
            assert ftgate_comparison.tuned.score > 99
        """
    )
    result = gate_project.runpytest(fake_adapter(fake_flips=6))
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["Sentiment*pass (test failed)*", "ftgate: Sentiment passed (1 test failed on its own assertions)"]
    )


def test_plot_without_matplotlib_is_a_usage_error(
    gate_project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, fake_adapter: Callable[..., str]
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    gate_project.makepyfile(GATE_TEST)
    result = gate_project.runpytest(fake_adapter(), f"{options.PLOT}=out.png")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--ftgate-plot needs matplotlib*pip install 'pytest-ftgate[[]plot[]]'*"])


def test_xdist_summary_printed_once_with_every_workers_records(
    gate_project: pytest.Pytester, fake_adapter: Callable[..., str]
) -> None:
    import json

    pytest.importorskip("xdist")
    gate_project.makepyfile(test_a=GATE_TEST, test_b=GATE_TEST.replace("test_no_forgetting", "test_other"))
    result = gate_project.runpytest("-n", "2", fake_adapter(fake_flips=6), f"{options.REPORT}=r.json")
    result.assert_outcomes(failed=2)
    text = result.stdout.str()
    assert text.count("= ftgate =") == 1
    result.stdout.fnmatch_lines(
        ["Sentiment (test_no_forgetting)*fail*", "Sentiment (test_other)*fail*", "ftgate: 2 of 2 gates regressed*"]
    )
    data = json.loads((gate_project.path / "r.json").read_text())
    assert [g["nodeid"] for g in data["gates"]] == ["test_a.py::test_no_forgetting", "test_b.py::test_other"]


def test_early_stop_uses_fewer_examples(
    gate_project: pytest.Pytester, fake_adapter: Callable[..., str], sentiment_file: Callable[..., Path]
) -> None:
    sentiment_file(n=400)
    gate_project.makepyfile(
        GATE_TEST
        + """

def test_calls():
    import conftest
    print("CALLS", conftest.CALLS["examples"])
"""
    )
    args = [fake_adapter(fake_flips=200), "-s", options.EARLY_STOP, "-p", "no:syrupy"]
    result = gate_project.runpytest(*args)
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.re_match_lines([r".*CALLS 100$"])  # 50 base + 50 tuned instead of 800
    result.stdout.re_match_lines(
        [r".*Stopped early after 50 of 400 examples: the complete run's verdict can no longer change.*"]
    )


def test_early_stop_agrees_with_the_complete_run_when_close(
    gate_project: pytest.Pytester, fake_adapter: Callable[..., str], sentiment_file: Callable[..., Path]
) -> None:
    sentiment_file(n=400)
    gate_project.makepyfile(GATE_TEST)
    full = gate_project.runpytest(fake_adapter(fake_flips=9), "-p", "no:syrupy", options.NO_CACHE)
    early = gate_project.runpytest(fake_adapter(fake_flips=9), "-p", "no:syrupy", options.EARLY_STOP)
    full.assert_outcomes(failed=1)  # 9 of 400 lost: -2.25 points, past the 2.0 margin
    early.assert_outcomes(failed=1)


def test_gated_tests_share_one_xdist_group(gate_project: pytest.Pytester) -> None:
    """``-n N --dist loadgroup`` then keeps every gate on one worker: one model load, one copy."""
    pytest.importorskip("xdist")
    gate_project.makepyfile(
        test_a=GATE_TEST.replace("test_no_forgetting", "test_a"),
        test_c="import pytest\n\n@pytest.mark.xdist_group('mine')\n"
        "@pytest.mark.ftgate('sentiment', max_drop=1.0)\ndef test_own_group():\n    pass\n\ndef test_plain():\n    pass\n",
    )
    items, _ = gate_project.inline_genitems()
    groups = {item.name: [m.args[0] for m in item.iter_markers("xdist_group")] for item in items}
    assert groups == {"test_a": ["ftgate"], "test_own_group": ["mine"], "test_plain": []}


def test_loadgroup_runs_every_gate_on_one_worker(
    gate_project: pytest.Pytester, fake_adapter: Callable[..., str]
) -> None:
    """Under ``-n 2 --dist loadgroup`` the gates share one worker while plain tests spread out,
    also on pytest versions whose structured node ids drop xdist's group suffix (xdist_compat)."""
    pytest.importorskip("xdist")
    gate = GATE_TEST.replace("test_no_forgetting", "test_gate_{}")
    gate_project.makepyfile(
        test_a=gate.format("a") + "\ndef test_plain_a1():\n    pass\n\ndef test_plain_a2():\n    pass\n",
        test_b=gate.format("b") + "\ndef test_plain_b1():\n    pass\n\ndef test_plain_b2():\n    pass\n",
    )
    result = gate_project.runpytest(
        "-n", "2", "--dist", "loadgroup", "-v", "-p", "no:randomly", fake_adapter()
    )
    result.assert_outcomes(passed=6)
    ran = re.findall(r"\[(gw\d)\] .*PASSED (\S+)", result.stdout.str())
    gates = {worker for worker, test in ran if "test_gate_" in test}
    assert len(ran) == 6 and len(gates) == 1
    assert not any("@" in test for _, test in ran)  # the ids stay intact (xdist_compat)


def test_progress_is_live_and_quiet_under_q(gate_project: pytest.Pytester, fake_adapter: Callable[..., str]) -> None:
    gate_project.makepyfile(GATE_TEST)
    loud = gate_project.runpytest(fake_adapter(), options.NO_CACHE)
    loud.stdout.fnmatch_lines(["ftgate: Sentiment base (generate): 40/40 examples (*/s, ~0 s left)"])
    quiet = gate_project.runpytest(fake_adapter(), options.NO_CACHE, "-q")
    assert "examples (" not in quiet.stdout.str()


def test_list_form_with_an_empty_body_is_gated(gate_project: pytest.Pytester, fake_adapter: Callable[..., str]) -> None:
    gate_project.makepyfile("""
        import pytest

        @pytest.mark.ftgate(["sentiment"], max_drop=2.0)
        def test_all():
            pass
    """)
    result = gate_project.runpytest(fake_adapter(fake_flips=6))
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*Sentiment dropped 15.0 points*"])
