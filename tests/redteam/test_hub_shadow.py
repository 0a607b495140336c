"""Red team: a folder committed under a hub id's name must not stand in for the hub model.

The backends load a local folder before they ask the hub (transformers' ``from_pretrained`` does),
and ftgate resolved a model that exists as a path to that path. So a pull request that commits
``mlx-community/gemma-4-e4b-it-4bit/`` (the default base) or ``HuggingFaceTB/SmolLM2-135M-Instruct/``
with other weights had those loaded as the "base" on a first run without a stored baseline, and the
gate compared the adapter against a base of the PR's choosing. A model written as a hub id
(``org/name``) that also exists here is now refused, naming both and the two ways out."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from pytest_ftgate import options
from pytest_ftgate.backends import Model
from pytest_ftgate.errors import ConfigError
from pytest_ftgate.gate import Gate

HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


class FolderFirst:
    """Loads the way transformers does: a local folder of that name first, else the hub id.
    Records what it loaded."""

    name = "folderfirst"

    def __init__(self) -> None:
        self.loaded: list[str] = []

    def version(self) -> str:
        return "1"

    def load(self, model: str) -> Model:
        source = "folder" if Path(model).expanduser().exists() else "hub"
        self.loaded.append(f"{source}:{model}")
        return Model(label=model, fingerprint=f"{source}:{model}", backend=self, handle=None)

    def with_adapter(self, base: Model, adapter: str) -> Model:
        raise NotImplementedError

    def generate(self, model: Model, prompts: Sequence[Any], *, max_tokens: int, batch_size: int | None) -> list[str]:
        raise NotImplementedError


@pytest.fixture
def planted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The working directory holds a folder named like the hub id, with weights of the PR's choosing."""
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / HUB_ID
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "llama"}')
    return folder


@pytest.mark.parametrize("setting", ["base", "candidate"])
def test_a_hub_id_shadowed_by_a_local_folder_is_refused(planted: Path, setting: str) -> None:
    backend = FolderFirst()
    kwargs: dict[str, Any] = {setting: HUB_ID}
    with pytest.raises(ConfigError) as info:
        gate = Gate(backend=backend, cache=None, progress=False, **kwargs)
        gate.base_model  # before: the planted folder loaded as the base, silently
        gate.tuned_model if setting == "candidate" else None
    assert backend.loaded == []
    assert str(info.value) == (
        f"{HUB_ID} is written as a Hugging Face hub id, but {HUB_ID} exists here under the same name and would be "
        f"loaded instead of the hub model: write {setting}=./{HUB_ID} to mean the local folder, or remove or rename "
        "the folder to mean the hub id"
    )


def test_the_folder_written_as_a_path_still_loads(planted: Path) -> None:
    backend = FolderFirst()
    gate = Gate(base=f"./{HUB_ID}", backend=backend, cache=None, progress=False)
    gate.base_model
    assert backend.loaded == [f"folder:./{HUB_ID}"]


def test_a_hub_id_without_such_a_folder_goes_to_the_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "HuggingFaceTB").mkdir()  # the org alone is not the model
    backend = FolderFirst()
    for model in (HUB_ID, options.DEFAULT_BASE):
        Gate(base=model, backend=backend, cache=None, progress=False).base_model
    assert backend.loaded == [f"hub:{HUB_ID}", f"hub:{options.DEFAULT_BASE}"]


def test_a_served_name_is_not_a_folder(planted: Path) -> None:
    """vLLM serves models under their hub ids: a folder of that name here is irrelevant."""
    Gate(base=HUB_ID, backend="openai", base_url="http://127.0.0.1:9/v1", cache=None, progress=False)


def test_through_pytest_the_default_base_shadowed_by_a_committed_folder_is_a_usage_error(
    gate_project: pytest.Pytester, fake_adapter: Any
) -> None:
    gate_project.makeini("[pytest]\nftgate_backend = fake\n")  # no ftgate_base: the default base
    gate_project.makepyfile("def test_nothing():\n    pass\n")
    gate_project.runpytest(fake_adapter()).assert_outcomes(passed=1)  # no such folder: fine
    (gate_project.path / options.DEFAULT_BASE).mkdir(parents=True)
    result = gate_project.runpytest(fake_adapter())
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            f"*{options.DEFAULT_BASE} is written as a Hugging Face hub id, but "
            f"{gate_project.path / options.DEFAULT_BASE} exists here under the same name and would be loaded "
            f"instead of the hub model: write --ftgate-base=./{options.DEFAULT_BASE} to mean the local folder, "
            "or remove or rename the folder to mean the hub id"
        ]
    )


@pytest.mark.parametrize("option", [options.BASE, options.CANDIDATE])
def test_through_pytest_a_shadowed_hub_id_is_refused_and_dot_slash_is_the_folder(
    gate_project: pytest.Pytester, option: str
) -> None:
    (gate_project.path / HUB_ID).mkdir(parents=True)
    gate_project.makepyfile("def test_nothing():\n    pass\n")
    refused = gate_project.runpytest(f"{option}={HUB_ID}")
    assert refused.ret == pytest.ExitCode.USAGE_ERROR
    refused.stderr.fnmatch_lines([f"*write {option}=./{HUB_ID} to mean the local folder*"])
    accepted = gate_project.runpytest(f"{option}=./{HUB_ID}")
    accepted.assert_outcomes(passed=1)
