"""The fast paths must not change answers: stop rules (``Benchmark.answer_decided``), batched
generation with left padding in the mlx and transformers backends, and batched log-prob scoring.

Stop rules are checked two ways: hand-written edge cases, and an exhaustive property check that
any prefix a rule calls decided parses to the same answer as every longer reply built from it.
The backends are checked against the libraries' own one-prompt-at-a-time generation (the seed
study's loop) on the tiny random Gemma 4: the same text without stop rules, the same parsed
answer with them.
"""

from __future__ import annotations

import itertools
import random
from pathlib import Path
from typing import Any

import pytest

from pytest_ftgate.benchmarks import get_benchmark
from pytest_ftgate.benchmarks.base import Benchmark, Example
from pytest_ftgate.testing import FPB_SYSTEM, build_tiny_llama

MEDMCQA = get_benchmark("medmcqa")
FPB = get_benchmark("fpb")
CONVFINQA = get_benchmark("convfinqa")


# ------------------------------------------------------------------------------ stop rules
@pytest.mark.parametrize(
    ("text", "decided"),
    [
        ("", False),
        ("A", False),  # may become "AN"
        ("A ", True),
        ("A.", True),
        ("a)", True),  # the rule upper-cases the reply
        ("B\n", True),
        ("The answer", False),  # no standalone letter
        ("ANSWER: C", False),  # C is last: "CD" would not match
        ("ANSWER: C.", True),
        ("I think a", False),  # the article "a" counts for the seed's rule, once it is complete
        ("I think a patient", True),
        ("Bé", False),  # é is a word character: no match
        ("Ab c", False),  # "AB" is no standalone letter, "C" is last
        ("E. none, D", False),
    ],
)
def test_medmcqa_stop_rule(text: str, decided: bool) -> None:
    assert MEDMCQA.answer_decided(text) is decided


@pytest.mark.parametrize(
    ("text", "decided"),
    [
        ("", False),
        ("Positive", True),
        ("POSITIVE.", True),
        ("Negative", False),  # a later "positive" would win (list order)
        ("neutral", False),
        ("Negative, not positive", True),
        ("posit", False),
    ],
)
def test_fpb_stop_rule(text: str, decided: bool) -> None:
    assert FPB.answer_decided(text) is decided


@pytest.mark.parametrize(
    ("text", "decided"),
    [
        ("", False),
        ("yes", False),  # a number later would win
        ("3", False),
        ("3.", False),  # may become 3.5
        ("3.5", False),
        ("3.5.", True),  # a second "." cannot continue it
        ("3. ", True),
        ("3.x", True),
        ("1,", False),  # commas are removed: "1,2" is 12
        ("1,2", False),
        ("1,234.5%", True),
        ("-4.2 million", True),
        (".5\n", True),
        ("$12", False),
        ("$12\n", True),
        ("The answer is 7", False),
    ],
)
def test_convfinqa_stop_rule(text: str, decided: bool) -> None:
    assert CONVFINQA.answer_decided(text) is decided


ALPHABETS = {
    "medmcqa": ["A", "B", "C", "D", "E", "a", "b", "N", "É", "é", " ", ".", "\n", ")", "_", "1"],
    "fpb": ["positive", "negative", "neutral", "pos", "itive", "Neg", "ative", " ", ".", "\n"],
    "convfinqa": ["1", "2", "0", ".", ",", "-", "+", "%", " ", "\n", "e", "yes", "no", "$"],
}


@pytest.mark.parametrize("name", sorted(ALPHABETS))
def test_a_decided_prefix_keeps_its_answer_whatever_follows(name: str) -> None:
    """Exhaustive over short replies: a stop rule never cuts a reply whose answer would change."""
    bench = get_benchmark(name)
    alphabet = ALPHABETS[name]
    rng = random.Random(0)
    replies = ["".join(p) for n in range(1, 5) for p in itertools.product(alphabet, repeat=n)]
    replies += ["".join(rng.choices(alphabet, k=rng.randint(5, 12))) for _ in range(3000)]
    checked = 0
    for reply in replies:
        for cut in range(len(reply) + 1):
            prefix = reply[:cut]
            if bench.answer_decided(prefix):
                assert bench.parse(prefix) == bench.parse(reply), (prefix, reply)
                checked += 1
    assert checked > 1000


def test_custom_benchmarks_never_stop_early() -> None:
    assert Benchmark().answer_decided("A. positive 42\n") is False


# ------------------------------------------------------------------------------ backends
def _examples(bench: Benchmark, n: int, seed: int = 0) -> list[Example]:
    """Synthetic examples in each benchmark's own prompt format (no data files needed)."""
    rng = random.Random(seed)
    words = "profit loss rose fell bank shares patient dose nerve artery net sales 2007 EUR mn".split()
    out = []
    for i in range(n):
        text = " ".join(rng.choices(words, k=rng.randint(3, 30)))
        if bench.name == "medmcqa":
            prompt = bench.template.format(question=text, opa="one", opb="two", opc="three", opd="four")
        elif bench.name == "convfinqa":
            prompt = f"{text}\n\n| year | {rng.randint(1, 999)} |\n\nQ: what is the change?\nA:"
        else:
            prompt = text
        out.append(Example(id=str(i), prompt=prompt, gold="A"))
    return out


PROMPTS = [
    [{"role": "system", "content": FPB_SYSTEM}, {"role": "user", "content": user}]
    for user in ("Shares of the bank fell.", "Operating profit rose to EUR 13.1 mn.", "Net sales were flat.", "Ok.")
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pytest_ftgate.testing import make_tiny_gemma4

    return make_tiny_gemma4(tmp_path_factory.mktemp("models") / "tiny-gemma4")


@pytest.fixture(scope="module")
def mlx_loaded(tiny: Path) -> Any:
    pytest.importorskip("mlx_vlm")
    from pytest_ftgate.backends.mlx import MLXBackend

    backend = MLXBackend()
    return backend, backend.load(str(tiny))


@pytest.fixture(scope="module")
def torch_loaded(tiny: Path) -> Any:
    pytest.importorskip("torch", reason="torch not installed: pip install torch==2.13.0 -e .[torch]")
    pytest.importorskip("transformers")
    from pytest_ftgate.backends.transformers import TransformersBackend

    backend = TransformersBackend()
    return backend, backend.load(str(tiny))


class TestMLX:
    @pytest.fixture
    def loaded(self, mlx_loaded: Any) -> Any:
        return mlx_loaded

    def _seed_loop(self, backend: Any, model: Any, prompts: list[Any], max_tokens: int) -> list[str]:
        """The seed study's loop: one ``mlx_vlm.generate`` call per prompt."""
        import mlx_vlm
        from mlx_vlm.prompt_utils import apply_chat_template

        handle = model.handle
        return [
            mlx_vlm.generate(
                handle.model,
                handle.processor,
                apply_chat_template(handle.processor, handle.model.config, messages, num_images=0),
                max_tokens=max_tokens,
                temperature=0.0,
                verbose=False,
            ).text
            for messages in prompts
        ]

    @pytest.mark.parametrize(("name", "n", "max_tokens"), [("fpb", 10, 8), ("medmcqa", 6, 40), ("convfinqa", 4, 12)])
    def test_batched_equals_one_at_a_time(self, loaded: Any, name: str, n: int, max_tokens: int) -> None:
        backend, model = loaded
        bench = get_benchmark(name)
        prompts = [bench.messages(e) for e in _examples(bench, n)]
        reference = self._seed_loop(backend, model, prompts, max_tokens)
        for size in (None, 3):
            assert backend.generate(model, prompts, max_tokens=max_tokens, batch_size=size) == reference
        stopped = backend.generate(model, prompts, max_tokens=max_tokens, batch_size=None, stop=bench.answer_decided)
        assert [bench.parse(r) for r in stopped] == [bench.parse(r) for r in reference]
        assert all(ref.startswith(s) for s, ref in zip(stopped, reference, strict=True))

    def test_stop_ends_each_sequence_at_its_decision(self, loaded: Any) -> None:
        backend, model = loaded
        reference = self._seed_loop(backend, model, PROMPTS, 12)
        stopped = backend.generate(model, PROMPTS, max_tokens=12, batch_size=None, stop=lambda text: len(text) >= 3)
        assert all(s == r or (len(s) >= 3 and r.startswith(s)) for s, r in zip(stopped, reference, strict=True))
        assert any(len(s) < len(r) for s, r in zip(stopped, reference, strict=True))

    def test_batched_scores_equal_one_pass_per_prompt(self, loaded: Any) -> None:
        backend, model = loaded
        forms = [f for variants in FPB.answer_forms().values() for f in variants]
        handle = model.handle
        pieces = [list(handle.tokenizer.encode(f, add_special_tokens=False)) for f in forms]
        assert any(len(p) > 1 for p in pieces), "the multi-token path must be exercised"
        scores = backend.score(model, PROMPTS, forms)
        for messages, row in zip(PROMPTS, scores, strict=True):
            ids = backend.prompt_ids(model, messages)
            for piece, value in zip(pieces, row, strict=True):
                logprobs = _logprobs(backend, handle, ids + piece[:-1])[len(ids) - 1 :]
                expected = sum(float(logprobs[i, t]) for i, t in enumerate(piece))
                assert value == pytest.approx(expected, abs=1e-4)

    @pytest.mark.parametrize("size", [None, 4])
    def test_conversations_equal_one_at_a_time(self, loaded: Any, size: int | None) -> None:
        """Turns of one conversation share the document: batched by group, its prefix computed
        once, across the tiny Gemma 4's sliding window (64, shorter than the documents)."""
        _check_conversations(loaded, size, self._seed_loop)

    def test_grouped_scores_equal_one_pass_per_prompt(self, loaded: Any) -> None:
        _check_grouped_scores(loaded)

    def test_auto_batch_size(self) -> None:
        from pytest_ftgate.backends.mlx import MLXBackend

        backend = MLXBackend()
        assert backend.auto_batch_size(100) > backend.auto_batch_size(2000) >= 1
        assert backend.auto_batch_size(10**6) == 1


class TestTransformers:
    @pytest.fixture
    def loaded(self, torch_loaded: Any) -> Any:
        return torch_loaded

    def _seed_loop(self, backend: Any, model: Any, prompts: list[Any], max_tokens: int) -> list[str]:
        """One ``model.generate`` call per prompt (greedy), as a transformers user writes it."""
        import torch

        handle = model.handle
        replies = []
        for messages in prompts:
            ids = torch.tensor([backend.prompt_ids(model, messages)], device=handle.model.device)
            batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
            with torch.inference_mode():
                output = handle.model.generate(
                    **batch, max_new_tokens=max_tokens, do_sample=False, pad_token_id=handle.tokenizer.pad_token_id
                )
            new = output[0, batch["input_ids"].shape[1] :]
            replies.append(handle.tokenizer.decode(new, skip_special_tokens=True))
        return replies

    @pytest.mark.parametrize(("name", "n", "max_tokens"), [("fpb", 10, 8), ("medmcqa", 6, 40), ("convfinqa", 4, 12)])
    def test_batched_equals_one_at_a_time(self, loaded: Any, name: str, n: int, max_tokens: int) -> None:
        backend, model = loaded
        bench = get_benchmark(name)
        prompts = [bench.messages(e) for e in _examples(bench, n)]
        reference = self._seed_loop(backend, model, prompts, max_tokens)
        for size in (None, 3):
            assert backend.generate(model, prompts, max_tokens=max_tokens, batch_size=size) == reference
        stopped = backend.generate(model, prompts, max_tokens=max_tokens, batch_size=None, stop=bench.answer_decided)
        assert [bench.parse(r) for r in stopped] == [bench.parse(r) for r in reference]

    def test_stop_ends_each_sequence_at_its_decision(self, loaded: Any) -> None:
        backend, model = loaded
        reference = self._seed_loop(backend, model, PROMPTS, 12)
        stopped = backend.generate(model, PROMPTS, max_tokens=12, batch_size=None, stop=lambda text: len(text) >= 3)
        assert all(s == r or (len(s) >= 3 and r.startswith(s)) for s, r in zip(stopped, reference, strict=True))
        assert any(len(s) < len(r) for s, r in zip(stopped, reference, strict=True))

    def test_batched_scores_equal_a_full_forward_pass(self, loaded: Any) -> None:
        backend, model = loaded
        from pytest_ftgate.backends.transformers import CONTINUATIONS_PER_PASS

        forms = [f for variants in FPB.answer_forms().values() for f in variants]
        forms += ["A", " B", "POSITIVE!", "neutral sentiment", "NEGATIVE, clearly"]
        handle = model.handle
        pieces = [list(handle.tokenizer(f, add_special_tokens=False)["input_ids"]) for f in forms]
        assert any(len(p) == 1 for p in pieces)
        # longer forms of several lengths, in more than one shared pass
        assert len({len(p) for p in pieces if len(p) > 1}) > 1
        assert sum(len(p) > 1 for p in pieces) > CONTINUATIONS_PER_PASS
        scores = backend.score(model, PROMPTS, forms)
        for messages, row in zip(PROMPTS, scores, strict=True):
            ids = backend.prompt_ids(model, messages)
            for piece, value in zip(pieces, row, strict=True):
                logprobs = _logprobs(backend, handle, ids + piece[:-1])[len(ids) - 1 :]
                expected = sum(float(logprobs[i, t]) for i, t in enumerate(piece))
                assert value == pytest.approx(expected, abs=1e-4)

    def test_auto_batch_size(self, loaded: Any) -> None:
        backend, model = loaded
        assert backend.auto_batch_size(model.handle, 100) > backend.auto_batch_size(model.handle, 2000) >= 1
        assert backend.default_batch_size >= backend.auto_batch_size(model.handle, 100)


@pytest.fixture(scope="module")
def tiny_llama(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch", reason="torch not installed: pip install torch==2.13.0 -e .[torch]")
    pytest.importorskip("transformers")
    return build_tiny_llama(tiny, tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture(scope="module")
def llama_loaded(tiny_llama: Path) -> Any:
    from pytest_ftgate.backends.transformers import TransformersBackend

    backend = TransformersBackend()
    return backend, backend.load(str(tiny_llama))


class TestSharedPrefix:
    """The transformers backend runs the prompts' common prefix once (system prompt, template)."""

    @pytest.fixture
    def llama(self, llama_loaded: Any) -> Any:
        return llama_loaded

    def test_the_prefix_is_shared(self, llama: Any) -> None:
        from pytest_ftgate.backends.prefix import common_length, prefix_groups, prefix_plan

        backend, model = llama
        ids = [backend.prompt_ids(model, m) for m in PROMPTS]
        assert prefix_groups(ids) == [[i] for i in sorted(range(len(ids)), key=lambda i: ids[i])]
        plan = prefix_plan(ids)  # the system prompt and template: shared
        common = min(common_length(ids[0], row) for row in ids[1:])
        assert common > 20
        assert plan is not None and plan.start > 20
        _check_plan(ids, plan)
        width = max(map(len, ids))
        one_head = len(ids) * (width - common) + common  # the longest row as the only head
        assert _slots(ids, plan) <= one_head < len(ids) * width
        assert plan.heads[0] == width - (width - plan.start)  # the longest row is a head
        assert prefix_plan(ids[:1]) is None

    def test_conversations_on_one_document_share_it_one_pass_down(self, llama: Any) -> None:
        """ConvFinQA asks several conversations about one document: each turn rides on its
        conversation's last turn, and those last turns share the document in the pass below."""
        from pytest_ftgate.backends.prefix import prefix_plan

        backend, model = llama
        examples = _conversations(3, seed=4, per_document=3)
        ids = [backend.prompt_ids(model, CONVFINQA.messages(e)) for e in examples]
        conversations = {e.id.split("/")[0] for e in examples}
        documents = {e.id.split(".")[0] for e in examples}
        assert len(conversations) > len(documents) == 3
        plan = prefix_plan(ids)
        assert plan is not None and plan.sub is not None
        assert len(plan.heads) == len(conversations)
        levels = [plan]
        while levels[-1].sub is not None:
            levels.append(levels[-1].sub)
        assert min(len(level.heads) for level in levels) <= len(documents)  # one pass runs each document once
        assert max(map(len, ids)) - plan.start < 12  # each turn runs its closing template only
        _check_plan(ids, plan)
        one_level = len(ids) * (max(map(len, ids)) - plan.start) + len(plan.heads) * plan.span
        assert _slots(ids, plan) < one_level  # the documents are computed once, not per conversation

    def test_conversation_turns_are_grouped(self, llama: Any) -> None:
        from pytest_ftgate.backends.prefix import plan_batches, prefix_groups, prefix_plan

        backend, model = llama
        examples = _conversations(4, seed=1)
        ids = [backend.prompt_ids(model, CONVFINQA.messages(e)) for e in examples]
        by_conversation: dict[str, set[int]] = {}
        for i, example in enumerate(examples):
            by_conversation.setdefault(example.id.split("/")[0], set()).add(i)
        assert sorted(map(sorted, prefix_groups(ids))) == sorted(map(sorted, by_conversation.values()))
        plan = prefix_plan(ids)
        assert plan is not None
        assert len(plan.heads) == len(by_conversation)
        # each turn shares all but its closing template tokens with its conversation's last turn
        assert max(map(len, ids)) - plan.start < 12
        _check_plan(ids, plan)
        for size in (7, 2):  # automatic sizes: a group larger than the batch size is not split
            batches = plan_batches(ids, 8, lambda length, size=size: size)
            for group in by_conversation.values():
                assert sum(bool(group & set(batch)) for batch in batches) == 1
                assert all(len(batch) <= max(size, len(group)) for batch in batches if group & set(batch))
        assert max(map(len, by_conversation.values())) > 2
        assert max(map(len, backend._batches(model.handle, ids, 8, 2))) == 2  # a size the user chose is a cap
        rows = backend._batches(model.handle, ids, 8, None)
        assert sorted(i for batch in rows for i in batch) == list(range(len(ids)))
        # FPB-like prompts (only the system prompt in common) stay length-sorted
        fpb = [backend.prompt_ids(model, FPB.messages(e)) for e in _examples(FPB, 9)]
        flat = [i for batch in backend._batches(model.handle, fpb, 8, 4) for i in batch]
        assert [len(fpb[i]) for i in flat] == sorted((len(r) for r in fpb), reverse=True)

    @pytest.mark.parametrize(("name", "n", "max_tokens"), [("fpb", 10, 8), ("medmcqa", 6, 24)])
    def test_generate_equals_one_at_a_time(self, llama: Any, name: str, n: int, max_tokens: int) -> None:
        backend, model = llama
        bench = get_benchmark(name)
        prompts = [bench.messages(e) for e in _examples(bench, n)]
        reference = TestTransformers()._seed_loop(backend, model, prompts, max_tokens)
        for size in (None, 4):
            assert backend.generate(model, prompts, max_tokens=max_tokens, batch_size=size) == reference

    @pytest.mark.parametrize("size", [None, 3, 5])
    def test_conversations_equal_one_at_a_time(self, llama: Any, size: int | None) -> None:
        """Turns of one conversation share the document: batched by group, prefix computed once."""
        _check_conversations(llama, size, TestTransformers()._seed_loop)

    def test_no_prefix_pass_runs_twice_in_one_call(self, llama: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        """The batches of one call share the system prompt: the pass that computes it (at
        whatever level of the plan) runs once, the memo gives it to the batches after."""
        from pytest_ftgate.backends import torch_graphs

        backend, model = llama
        preamble = "Classify the sentiment of the sentence below, taken from a financial news article. " * 3
        prompts = [
            [{"role": "system", "content": FPB_SYSTEM}, {"role": "user", "content": f"{preamble}{i}: {' '.join(t)}"}]
            for i, t in enumerate(itertools.combinations("profit loss rose fell bank".split(), 3))
        ]
        reference = backend.generate(model, prompts, max_tokens=4, batch_size=1)
        passes: list[tuple[tuple[int, ...], ...]] = []
        original = torch_graphs.planned_forward

        def spy(loaded: Any, ids: list[list[int]], cache: Any, *args: Any, **kwargs: Any) -> Any:
            passes.append(tuple(map(tuple, ids)))
            return original(loaded, ids, cache, *args, **kwargs)

        monkeypatch.setattr(torch_graphs, "planned_forward", spy)
        assert backend.generate(model, prompts, max_tokens=4, batch_size=4) == reference
        repeated = [p for p in set(passes) if passes.count(p) > 1]
        assert passes and not repeated
        assert len(backend._batches(model.handle, [backend.prompt_ids(model, m) for m in prompts], 4, 4)) > 2

    def test_prefix_pass_one_per_group_equals_one_padded_pass(self, llama: Any) -> None:
        """The CPU's unpadded pass per prefix, the GPU's single left-padded pass, and passes
        planned below one another (prefixes sharing a document) give the same keys and values."""
        import torch

        from pytest_ftgate.backends.prefix import prefix_plan
        from pytest_ftgate.backends.torch_graphs import prefix_states

        backend, model = llama
        prompts = [CONVFINQA.messages(e) for e in _conversations(2, seed=3, per_document=3)]
        prefixes = [backend.prompt_ids(model, m)[:-5] for m in prompts]
        span = max(map(len, prefixes))
        plan = prefix_plan(prefixes)
        assert plan is not None and plan.sub is not None  # turns on conversations on documents
        with torch.inference_mode():
            alone = prefix_states(model.handle, prefixes, together=False)
            others = [prefix_states(model.handle, prefixes, together=t, plan=plan) for t in (True, False)]
            others.append(prefix_states(model.handle, prefixes, together=True))
        assert len({len(p) for p in prefixes}) > 1 and any(state is not None for state in alone)
        for other in others:
            for one, two in zip(alone, other, strict=True):
                for row, prefix in enumerate(prefixes):
                    real = slice(span - len(prefix), span)  # padded positions differ, and are masked
                    torch.testing.assert_close(one[0][row, :, real], two[0][row, :, real], atol=1e-4, rtol=1e-4)
                    torch.testing.assert_close(one[1][row, :, real], two[1][row, :, real], atol=1e-4, rtol=1e-4)

    def test_scores_equal_a_full_forward_pass(self, llama: Any) -> None:
        TestTransformers().test_batched_scores_equal_a_full_forward_pass(llama)

    def test_grouped_scores_equal_a_full_forward_pass(self, llama: Any) -> None:
        _check_grouped_scores(llama)


def test_prefix_plans_take_only_the_rows_own_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    """Random batches shaped like the benchmarks (a system prompt; documents, conversations on
    them, turns that extend one another; duplicates; a prompt sharing nothing): every slot a
    plan fills from a pass below holds the row's own token at that place, at every level, and
    planning deeper never computes more slots than one level or no plan."""
    from pytest_ftgate.backends import prefix

    depths = []
    for seed in range(60):
        rng = random.Random(seed)
        system = [rng.randrange(50) for _ in range(rng.randint(0, 30))]
        ids: list[list[int]] = []
        for _ in range(rng.randint(1, 6)):
            document = system + [rng.randrange(50) for _ in range(rng.randint(0, 120))]
            for _ in range(rng.randint(1, 3)):
                turn = list(document)
                for _ in range(rng.randint(1, 4)):
                    turn = turn + [rng.randrange(50) for _ in range(rng.randint(1, 20))]
                    ids.append(turn + [7, 8, 9][: rng.randint(0, 3)])
        ids += [list(ids[0])] * rng.randint(0, 2) + [[rng.randrange(50) for _ in range(rng.randint(1, 9))]]
        rng.shuffle(ids)
        plan = prefix.prefix_plan(ids)
        levels = 0
        for costly in (prefix.prefix_plan(ids, prefix.PASS_COST_CPU), prefix.prefix_plan(ids, prefix.PASS_COST_GPU)):
            if costly is not None:  # passes that cost more than their slots: fewer of them, still exact
                _check_plan(ids, costly)
                assert _depth(costly) <= _depth(plan)
        if plan is not None:
            _check_plan(ids, plan)
            level = plan
            while level is not None:
                levels, level = levels + 1, level.sub
        depths.append(levels)
        with monkeypatch.context() as patch:
            patch.setattr(prefix, "MAX_DEPTH", 1)
            one = prefix.prefix_plan(ids)
        assert one is None or one.sub is None
        assert _slots(ids, plan) <= _slots(ids, one) <= _slots(ids, None)
    assert max(depths) >= 3  # plans three passes deep among them
    assert prefix.prefix_plan([[1] * 20, [2] * 20]) is None  # nothing shared, nothing padded: one plain pass


class TestSharedPrefixSlidingWindow:
    """The same on the tiny Gemma 4, whose sliding window (64) is shorter than the documents:
    the prefix pass keeps every position, rows are left padded only, so windows count right."""

    @pytest.mark.parametrize("size", [None, 4])
    def test_conversations_equal_one_at_a_time(self, torch_loaded: Any, size: int | None) -> None:
        backend, model = torch_loaded
        assert model.handle.model.config.get_text_config().sliding_window == 64
        _check_conversations(torch_loaded, size, TestTransformers()._seed_loop)

    def test_grouped_scores_equal_a_full_forward_pass(self, torch_loaded: Any) -> None:
        _check_grouped_scores(torch_loaded)


def _check_plan(ids: list[list[int]], plan: Any) -> None:
    """Every real token a row takes from the prefix pass is the row's own token at that place,
    in every pass below (``plan.sub``) too."""
    width = max(map(len, ids))
    for row, group, slots in zip(ids, plan.owner, plan.slots, strict=True):
        real = max(len(row) - (width - plan.start), 0)
        prefix = [None] * (plan.span - plan.heads[group]) + plan.prefixes[group]
        taken = [prefix[slots[t]] for t in range(plan.start - real, plan.start)]
        assert taken == row[:real]
    if plan.sub is not None:
        _check_plan(plan.prefixes, plan.sub)


def _depth(plan: Any) -> int:
    return 0 if plan is None else 1 + _depth(plan.sub)


def _slots(ids: list[list[int]], plan: Any) -> int:
    """Slots a plan's passes compute, padding included (one pass without a plan)."""
    width = max(map(len, ids))
    if plan is None:
        return len(ids) * width
    return len(ids) * (width - plan.start) + _slots(plan.prefixes, plan.sub)


def _conversations(count: int, seed: int = 0, per_document: int = 1) -> list[Example]:
    """ConvFinQA-shaped turns: ``count`` documents (100-200 words), one conversation each, or 2 to
    ``per_document``, 1-4 turns each, every turn's prompt holding the document and the earlier
    turns, in a shuffled order."""
    from pytest_ftgate.benchmarks.builtin import convfinqa_prompt

    rng = random.Random(seed)
    words = "profit loss rose fell bank shares net sales 2007 2008 EUR mn total assets cash".split()
    out = []
    for doc in range(count):
        document = " ".join(rng.choices(words, k=rng.randint(100, 200)))
        table = f"| year | {rng.randint(1, 999)} | {rng.randint(1, 999)} |"
        for conv in range(rng.randint(2, per_document) if per_document > 1 else 1):
            questions = [f"what is the change in {rng.choice(words)}?" for _ in range(rng.randint(1, 4))]
            answers = [str(rng.randint(1, 99)) for _ in questions]
            for turn, question in enumerate(questions):
                earlier = list(zip(questions[:turn], answers[:turn], strict=True))
                prompt = convfinqa_prompt(document, table, "", earlier, question)
                out.append(Example(id=f"c{doc}.{conv}/{turn}", prompt=prompt, gold="1"))
    rng.shuffle(out)
    return out


def _check_conversations(loaded: Any, size: int | None, seed_loop: Any) -> None:
    from pytest_ftgate.backends.prefix import PASS_COST_CPU, prefix_plan

    backend, model = loaded
    prompts = [CONVFINQA.messages(e) for e in _conversations(4, seed=1, per_document=2)]
    ids = [backend.prompt_ids(model, m) for m in prompts]
    plans = [prefix_plan([ids[i] for i in batch], PASS_COST_CPU) for batch in backend._batches(model.handle, ids, 10, size)]
    # a batch of several groups, whose shared prefixes cross the tiny Gemma 4's 64-token window,
    # and (in batches of any size) conversations on one document: their last turns share it in a
    # pass below
    assert any(plan is not None and len(plan.heads) > 1 and plan.start > 64 for plan in plans)
    if size is None:
        assert any(plan is not None and plan.sub is not None and plan.sub.start > 64 for plan in plans)
    reference = seed_loop(backend, model, prompts, 10)
    assert backend.generate(model, prompts, max_tokens=10, batch_size=size) == reference
    stopped = backend.generate(model, prompts, max_tokens=10, batch_size=size, stop=CONVFINQA.answer_decided)
    assert [CONVFINQA.parse(r) for r in stopped] == [CONVFINQA.parse(r) for r in reference]


def _check_grouped_scores(loaded: Any) -> None:
    """Scores of conversation turns (grouped, prefixes shared) equal one full pass per prompt."""
    backend, model = loaded
    handle = model.handle
    prompts = [CONVFINQA.messages(e) for e in _conversations(3, seed=2, per_document=2)]
    forms = ["1", " 2", "positive", " neutral"]
    scores = backend.score(model, prompts, forms)
    for messages, row in zip(prompts, scores, strict=True):
        ids = backend.prompt_ids(model, messages)
        for form, value in zip(forms, row, strict=True):
            piece = list(handle.tokenizer.encode(form, add_special_tokens=False))
            logprobs = _logprobs(backend, handle, ids + piece[:-1])[len(ids) - 1 :]
            assert value == pytest.approx(sum(float(logprobs[i][t]) for i, t in enumerate(piece)), abs=1e-4)


def _logprobs(backend: Any, handle: Any, ids: list[int]) -> Any:
    """Log-probabilities at every position of one unbatched forward pass over ``ids``."""
    if backend.name == "mlx":
        import mlx.core as mx

        output = handle.model(mx.array([ids]))
        logits = getattr(output, "logits", output)[0].astype(mx.float32)
        return logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    import torch

    with torch.inference_mode():
        return torch.log_softmax(handle.model(input_ids=torch.tensor([ids])).logits[0].float(), dim=-1)


@pytest.fixture(scope="module", params=["gemma4", "llama"])
def static_loaded(request: pytest.FixtureRequest, tiny: Path, tiny_llama: Path) -> Any:
    from pytest_ftgate.backends.transformers import TransformersBackend

    backend = TransformersBackend(static_decode=True)
    return backend, backend.load(str(tiny if request.param == "gemma4" else tiny_llama))


class TestStaticDecode:
    """The static-cache decoder (CUDA graphs on a GPU) runs its steps eagerly on a CPU when forced:
    the same replies as one-at-a-time generation, with sliding windows (tiny Gemma 4, window 64,
    prompts and replies crossing it) and without (tiny llama)."""

    @pytest.fixture
    def static(self, static_loaded: Any) -> Any:
        return static_loaded

    @pytest.mark.parametrize(("name", "n", "max_tokens"), [("fpb", 10, 8), ("medmcqa", 6, 40), ("convfinqa", 4, 12)])
    def test_equals_one_at_a_time(self, static: Any, name: str, n: int, max_tokens: int) -> None:
        backend, model = static
        bench = get_benchmark(name)
        prompts = [bench.messages(e) for e in _examples(bench, n)]
        reference = TestTransformers()._seed_loop(backend, model, prompts, max_tokens)
        for size in (None, 3):
            assert backend.generate(model, prompts, max_tokens=max_tokens, batch_size=size) == reference
        stopped = backend.generate(model, prompts, max_tokens=max_tokens, batch_size=None, stop=bench.answer_decided)
        assert [bench.parse(r) for r in stopped] == [bench.parse(r) for r in reference]
        assert not model.handle.static_failed

    def test_conversations_equal_one_at_a_time(self, static: Any) -> None:
        _check_conversations(static, None, TestTransformers()._seed_loop)
        assert not static[1].handle.static_failed

    def test_stop_ends_each_sequence_at_its_decision(self, static: Any) -> None:
        TestTransformers().test_stop_ends_each_sequence_at_its_decision(static)

    def test_used_where_asked(self, static: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        from pytest_ftgate.backends import transformers as module

        backend, model = static
        calls: list[int] = []
        original = module._StaticDecoder._step

        def counting(self: Any) -> None:
            calls.append(1)
            original(self)

        monkeypatch.setattr(module._StaticDecoder, "_step", counting)
        backend.generate(model, PROMPTS, max_tokens=6, batch_size=None)
        assert len(calls) >= 5  # one batch, 5 steps after the prefill
        calls.clear()
        module.TransformersBackend().generate(model, PROMPTS, max_tokens=6, batch_size=None)
        assert calls == []  # a CPU backend without the option decodes dynamically

    def test_a_failing_static_step_falls_back_to_the_dynamic_cache(
        self, tiny_llama: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from pytest_ftgate.backends import transformers as module

        backend = module.TransformersBackend(static_decode=True)
        model = backend.load(str(tiny_llama))
        reference = TestTransformers()._seed_loop(backend, model, PROMPTS, 6)

        def broken(self: Any) -> None:
            raise RuntimeError("operation not permitted when stream is capturing")

        monkeypatch.setattr(module._StaticDecoder, "_step", broken)
        with pytest.warns(RuntimeWarning, match="static-cache decoding failed"):
            assert backend.generate(model, PROMPTS, max_tokens=6, batch_size=None) == reference
        assert model.handle.static_failed
        assert backend.generate(model, PROMPTS, max_tokens=6, batch_size=2) == reference  # no retry, no warning


def _random_peft_adapter(model_dir: Path, dest: Path, seed: int, rank: int = 4) -> Path:
    """A random peft LoRA adapter on every attention and MLP projection (any transformers model)."""
    import json

    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    targets = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] in targets and hasattr(module, "in_features"):
            a = torch.randn(rank, module.in_features, generator=gen) / module.in_features**0.5
            tensors[f"base_model.model.{name}.lora_A.weight"] = a
            tensors[f"base_model.model.{name}.lora_B.weight"] = torch.randn(module.out_features, rank, generator=gen)
    dest.mkdir(parents=True)
    save_file(tensors, str(dest / "adapter_model.safetensors"))
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": 2 * rank, "lora_dropout": 0.0,
              "bias": "none", "target_modules": list(targets), "base_model_name_or_path": str(model_dir)}  # fmt: skip
    (dest / "adapter_config.json").write_text(json.dumps(config))
    return dest


@pytest.fixture(scope="module")
def grouped(request: pytest.FixtureRequest, tiny: Path, tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A static-decode backend whose prefill batches hold 3 prompts (so decode batches merge
    several), its base, and two adapters on that one base."""
    pytest.importorskip("peft")
    from pytest_ftgate.backends.transformers import TransformersBackend

    path = tiny if request.param == "gemma4" else tiny_llama
    root = tmp_path_factory.mktemp(f"adapters-{request.param}")
    backend = TransformersBackend(static_decode=True, prefill_rows=3)
    base = backend.load(str(path))
    tuned = [backend.with_adapter(base, str(_random_peft_adapter(path, root / f"a{s}", seed=s))) for s in (1, 2)]
    return backend, base, tuned


def _alone(backend: Any, model: Any, prompts: list[Any], max_tokens: int) -> list[str]:
    """One ``model.generate`` per prompt with ``model``'s adapter (or none) on."""
    with backend._active(model):
        return TestTransformers()._seed_loop(backend, model, prompts, max_tokens)


@pytest.mark.parametrize("grouped", ["gemma4", "llama"], indirect=True)
class TestDecodeGroups:
    """Prefill batches decoded together (``_groups``, ``merge_prefills``) and base and adapters
    decoded in one batch with LoRA switched per row (``peft_adapters.per_row``): every reply is the
    one that model gives alone, one prompt at a time."""

    CASES = (("medmcqa", 7, 30), ("fpb", 8, 8))

    def _merged(self, monkeypatch: pytest.MonkeyPatch) -> list[int]:
        from pytest_ftgate.backends import transformers as module

        sizes: list[int] = []
        original = module._merge_prefills

        def spy(parts: list[Any]) -> Any:
            sizes.append(len(parts))
            return original(parts)

        monkeypatch.setattr(module, "_merge_prefills", spy)
        return sizes

    @pytest.mark.parametrize(("name", "n", "max_tokens"), CASES)
    def test_merged_prefill_batches(self, grouped: Any, monkeypatch: pytest.MonkeyPatch, name: str, n: int,
                                    max_tokens: int) -> None:  # fmt: skip
        backend, base, tuned = grouped
        bench = get_benchmark(name)
        prompts = [bench.messages(e) for e in _examples(bench, n)]
        sizes = self._merged(monkeypatch)
        assert backend.generate(tuned[0], prompts, max_tokens=max_tokens, batch_size=None) == _alone(
            backend, tuned[0], prompts, max_tokens
        )
        assert sizes and max(sizes) >= 2  # prefill batches of 3 merged into one decode batch

    def test_conversations_merged(self, grouped: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        backend, base, tuned = grouped
        prompts = [CONVFINQA.messages(e) for e in _conversations(4, seed=2)]
        sizes = self._merged(monkeypatch)
        reference = _alone(backend, base, prompts, 10)
        assert backend.generate(base, prompts, max_tokens=10, batch_size=None) == reference
        stopped = backend.generate(base, prompts, max_tokens=10, batch_size=None, stop=CONVFINQA.answer_decided)
        assert [CONVFINQA.parse(r) for r in stopped] == [CONVFINQA.parse(r) for r in reference]
        assert sizes and max(sizes) >= 2

    @pytest.mark.parametrize(("name", "n", "max_tokens"), CASES)
    def test_sides_share_decode_batches(self, grouped: Any, monkeypatch: pytest.MonkeyPatch, name: str, n: int,
                                        max_tokens: int) -> None:  # fmt: skip
        backend, base, tuned = grouped
        bench = get_benchmark(name)
        prompts = [bench.messages(e) for e in _examples(bench, n, seed=3)]
        models = [base, *tuned]
        references = [_alone(backend, m, prompts, max_tokens) for m in models]
        assert references[0] != references[1] != references[2]  # the adapters change the replies
        sizes = self._merged(monkeypatch)
        assert backend.generate_sides(models, prompts, max_tokens=max_tokens, batch_size=None) == references
        assert sizes and max(sizes) >= 3
        # afterwards each model runs alone as before: scalings and active adapters restored
        assert backend.generate(tuned[1], prompts, max_tokens=max_tokens, batch_size=2) == references[2]
        assert backend.generate(base, prompts, max_tokens=max_tokens, batch_size=2) == references[0]

    @staticmethod
    def _refills(backend: Any, monkeypatch: pytest.MonkeyPatch, rows: int) -> list[int]:
        """Decode batches of ``rows`` rows at most; the sizes of what each refill took."""
        from pytest_ftgate.backends import torch_decode as module

        monkeypatch.setitem(backend.options, "decode_rows", rows)
        taken: list[int] = []
        original = module.QueueRefill.take

        def spy(self: Any, width: int, running: int) -> Any:
            added = original(self, width, running)
            if added is not None:
                taken.append(len(added[1]))
            return added

        monkeypatch.setattr(module.QueueRefill, "take", spy)
        return taken

    @pytest.mark.parametrize(("name", "n", "max_tokens", "rows"), [("medmcqa", 14, 30, 5), ("convfinqa", 0, 12, 10)])
    def test_finished_rows_are_refilled_from_the_queue(self, grouped: Any, monkeypatch: pytest.MonkeyPatch,
                                                       name: str, n: int, max_tokens: int, rows: int) -> None:  # fmt: skip
        """A small decode batch whose rows end at different lengths takes the queue's next
        prefill batches once half its rows have finished; the running rows go on where they
        were: every reply is the one a batch of one gives under the same stop rule."""
        backend, base, tuned = grouped
        bench = get_benchmark(name)
        examples = _examples(bench, n) if n else _conversations(3, seed=5, per_document=2)
        prompts = [bench.messages(e) for e in examples]
        alone = backend.generate(tuned[0], prompts, max_tokens=max_tokens, batch_size=1, stop=_varied)
        assert len({len(reply) for reply in alone}) > 3  # the rows end at different lengths
        taken = self._refills(backend, monkeypatch, rows)
        assert backend.generate(tuned[0], prompts, max_tokens=max_tokens, batch_size=None, stop=_varied) == alone
        assert taken and max(taken) >= 2
        # without a stop rule every row runs to max_tokens: nothing finishes early, nothing is refilled
        taken.clear()
        assert backend.generate(tuned[0], prompts[:6], max_tokens=6, batch_size=None) == backend.generate(
            tuned[0], prompts[:6], max_tokens=6, batch_size=1
        )
        assert taken == []

    def test_out_of_memory_mid_stream_redoes_only_unfinished_rows(self, grouped: Any,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
        """GPU memory running out while a decode batch takes more prompts: the rows that finished
        stay finished, the rest (running and taken) run again in smaller batches, same replies."""
        import torch

        from pytest_ftgate.backends import torch_decode

        backend, base, tuned = grouped
        prompts = [MEDMCQA.messages(e) for e in _examples(MEDMCQA, 14)]
        alone = backend.generate(tuned[0], prompts, max_tokens=30, batch_size=1, stop=_varied)
        self._refills(backend, monkeypatch, 5)
        spied = torch_decode.QueueRefill.take
        failed: list[int] = []

        def failing(self: Any, width: int, running: int) -> Any:
            if not failed:
                failed.append(len(self.run.results))
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
            return spied(self, width, running)

        monkeypatch.setattr(torch_decode.QueueRefill, "take", failing)
        assert backend.generate(tuned[0], prompts, max_tokens=30, batch_size=None, stop=_varied) == alone
        assert failed and failed[0] > 0  # some rows had finished before it ran out

    def test_a_non_finite_carried_row_stops_the_run(self, grouped: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        """NaN logits in a row carried into a refilled decode batch raise, naming the model and
        the prompt; no reply is made up for it."""
        from pytest_ftgate.backends import torch_graphs
        from pytest_ftgate.errors import NonFiniteError

        backend, base, tuned = grouped
        prompts = [MEDMCQA.messages(e) for e in _examples(MEDMCQA, 14)]
        self._refills(backend, monkeypatch, 5)
        carried: list[int] = []
        carry, greedy = torch_graphs.StaticDecoder.carry, torch_graphs.greedy

        def carrying(self: Any, keep: list[int]) -> Any:
            carried.append(len(keep))
            return carry(self, keep)

        def poisoned(logits: Any) -> Any:
            tokens = greedy(logits)
            if carried:  # the first step after a refill: row 0 is a carried row
                tokens[0] = -1
            return tokens

        monkeypatch.setattr(torch_graphs.StaticDecoder, "carry", carrying)
        monkeypatch.setattr(torch_graphs, "greedy", poisoned)
        with pytest.raises(NonFiniteError, match=r"\+ a1 gave non-finite logits") as raised:
            backend.generate(tuned[0], prompts, max_tokens=30, batch_size=None, stop=_varied)
        assert carried and raised.value.index in range(len(prompts))  # the prompt, for the runner to name

    def test_refilled_rows_of_both_sides(self, grouped: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        """Base and adapter rows refilled into shared decode batches: each reply is its model's."""
        backend, base, tuned = grouped
        prompts = [MEDMCQA.messages(e) for e in _examples(MEDMCQA, 10, seed=4)]
        models = [base, tuned[0]]
        references = [backend.generate(m, prompts, max_tokens=24, batch_size=1, stop=_varied) for m in models]
        assert references[0] != references[1]
        taken = self._refills(backend, monkeypatch, 6)
        assert backend.generate_sides(models, prompts, max_tokens=24, batch_size=None, stop=_varied) == references
        assert taken

    def test_a_non_finite_row_names_its_model(self, grouped: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        from pytest_ftgate.backends import torch_decode as module
        from pytest_ftgate.errors import NonFiniteError

        backend, base, tuned = grouped
        original = module.greedy
        rows = [0]

        def poisoned(logits: Any) -> Any:
            tokens = original(logits)
            if tokens.shape[0] == 2 * len(PROMPTS):  # the merged base + tuned batch: poison a tuned row
                tokens[len(PROMPTS) + 1] = -1
                rows[0] += 1
            return tokens

        monkeypatch.setattr(module, "greedy", poisoned)
        with pytest.raises(NonFiniteError, match=r"\+ a1"):
            backend.generate_sides([base, tuned[0]], PROMPTS, max_tokens=4, batch_size=None)
        assert rows[0] >= 1


def _varied(reply: str) -> bool:
    """A stop rule that ends replies at different lengths (2 to 10 characters, by their start)."""
    return len(reply) >= 2 + sum(map(ord, reply[:2])) % 9


def test_gate_runs_base_and_tuned_together(tiny_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With no stored baseline, ``Gate.compare`` runs base and tuned in one pass
    (``runner.evaluate_sides``) and gets what it gets side by side; the prediction cache then
    holds both sides (a second gate generates nothing); a stored baseline keeps the base out."""
    pytest.importorskip("peft")
    from pytest_ftgate import Gate
    from pytest_ftgate.backends.transformers import TransformersBackend

    adapter = _random_peft_adapter(tiny_llama, tmp_path / "adapter", seed=5)
    calls: list[int] = []

    def gate(cache: str | None, **options: Any) -> Gate:
        backend = TransformersBackend(static_decode=True, prefill_rows=3, **options)
        original = backend.generate_sides

        def counting(models: Any, prompts: Any, **kw: Any) -> Any:
            calls.append(len(models))
            return original(models, prompts, **kw)

        monkeypatch.setattr(backend, "generate_sides", counting)
        return Gate(base=str(tiny_llama), adapter=str(adapter), backend=backend, cache=cache, limit=9,
                    progress=False)  # fmt: skip

    together = gate(str(tmp_path / "cache")).compare("finsent-probe")
    assert 2 in calls  # base and tuned in one call
    calls.clear()
    apart = Gate(base=str(tiny_llama), adapter=str(adapter), backend=TransformersBackend(), cache=None, limit=9,
                 progress=False).compare("finsent-probe")  # fmt: skip
    for a, b in ((together.base, apart.base), (together.tuned, apart.tuned)):
        assert [p.output for p in a.predictions] == [p.output for p in b.predictions]
    again = gate(str(tmp_path / "cache")).compare("finsent-probe")
    assert calls == [] and again.delta == together.delta  # both sides came from the cache
    stored = gate(None)
    stored.use_baseline("finsent-probe", together.base)
    stored.compare("finsent-probe")
    assert calls and 2 not in calls  # the stored baseline stands for the base: the tuned side alone
