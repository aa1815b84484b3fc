"""The proposer engine without servers: request validation, candidate counting, equivalence maths and placement.

Models are not loaded here: validation needs none, counting uses a toy tokenizer, placement reads config.json only.
"""

from __future__ import annotations

import types

import pytest
import torch
from transformers import BertConfig, LlamaConfig

from crucible.models import IncompatibleModelError, PlacementError
from crucible.proposer import equivalence
from crucible.proposer.config import ProposerConfig
from crucible.proposer.engine import ProposerEngine
from crucible.proposer.generation import FINISH_LENGTH, FINISH_STOP, GeneratedRow
from crucible.proposer.placement import plan_placement
from crucible.proposer.requests import ProposeSpec, validate_propose
from crucible.runtime.config import load_config
from crucible.runtime.errors import ConfigError, InvalidArgument, Unavailable

SOURCE = "The committee postponed the vote because several members were travelling abroad."


def _config(**settings) -> ProposerConfig:
    return load_config(ProposerConfig, "proposer", env={}, **settings)


def _engine(**settings) -> ProposerEngine:
    return ProposerEngine(_config(**settings))


def _violations(spec: ProposeSpec, **settings) -> dict[str, str]:
    with pytest.raises(InvalidArgument) as caught:
        validate_propose(spec, _config(**settings))
    return dict(caught.value.field_violations)


def test_valid_specs_pass():
    config = _config()
    validate_propose(ProposeSpec(SOURCE, "paraphrase"), config)
    validate_propose(
        ProposeSpec(
            "Which gas?",
            "equivalent_question",
            ("O2", "CO2"),
            1,
            n=16,
            temperature=0.0,
            top_p=1.0,
            max_new_tokens=512,
            seed=2**64 - 1,
        ),
        config,
    )


@pytest.mark.parametrize(
    "spec, fields",
    [
        (ProposeSpec("", "paraphrase"), {"text"}),
        (ProposeSpec(" \n\t", "paraphrase"), {"text"}),
        (ProposeSpec("x" * 8001, "paraphrase"), {"text"}),
        (ProposeSpec(SOURCE, None), {"mode"}),
        (ProposeSpec(SOURCE, "paraphrase", n=17), {"n"}),
        (ProposeSpec(SOURCE, "paraphrase", max_new_tokens=513), {"max_new_tokens"}),
        (ProposeSpec(SOURCE, "paraphrase", temperature=2.5), {"temperature"}),
        (ProposeSpec(SOURCE, "paraphrase", temperature=float("nan")), {"temperature"}),
        (ProposeSpec(SOURCE, "paraphrase", top_p=0.0), {"top_p"}),
        (ProposeSpec(SOURCE, "paraphrase", top_p=1.5), {"top_p"}),
        (ProposeSpec(SOURCE, "paraphrase", instruction="y" * 1001), {"instruction"}),
        (ProposeSpec(SOURCE, "paraphrase", options=("a", "b")), {"options"}),
        (ProposeSpec(SOURCE, "paraphrase", correct_option_index=0), {"correct_option_index"}),
        (ProposeSpec("Which gas?", "equivalent_question"), {"options", "correct_option_index"}),
        (ProposeSpec("Which gas?", "equivalent_question", ("O2", "CO2")), {"correct_option_index"}),
        (ProposeSpec("Which gas?", "equivalent_question", ("O2",), 0), {"options"}),
        (ProposeSpec("Which gas?", "equivalent_question", tuple("abcdefghijklmnopqrstuvwxyz!"), 0), {"options"}),
        (ProposeSpec("Which gas?", "equivalent_question", ("O2", " "), 0), {"options[1]"}),
        (ProposeSpec("Which gas?", "equivalent_question", ("O2", "CO2"), 2), {"correct_option_index"}),
        (ProposeSpec("", None, n=99, max_new_tokens=9999), {"text", "mode", "n", "max_new_tokens"}),
    ],
)
def test_bad_specs_name_every_bad_field(spec, fields):
    assert set(_violations(spec)) == fields


def test_violation_reason_is_specific():
    with pytest.raises(InvalidArgument) as caught:
        validate_propose(ProposeSpec("", "paraphrase"), _config())
    assert caught.value.reason == "EMPTY_TEXT" and "text" in caught.value.message
    with pytest.raises(InvalidArgument) as caught:
        validate_propose(ProposeSpec("Q?", "equivalent_question", correct_option_index=0), _config())
    assert caught.value.reason == "MISSING_OPTIONS"


def test_limits_come_from_config():
    assert set(_violations(ProposeSpec(SOURCE, "paraphrase", n=5), max_candidates=4)) == {"n"}
    validate_propose(ProposeSpec(SOURCE, "paraphrase", n=32), _config(max_candidates=32))


async def test_calls_before_start_are_unavailable():
    engine = _engine()
    with pytest.raises(Unavailable):
        await engine.propose(ProposeSpec(SOURCE, "paraphrase"))
    with pytest.raises(Unavailable):
        await engine.embed(["a"])
    with pytest.raises(InvalidArgument):  # bad input is reported before readiness
        await engine.embed(["a", ""])


async def test_equivalence_and_embed_input_errors():
    engine = _engine(max_pairs_per_call=2, max_texts_per_call=2)
    cases = [
        (engine.check_equivalence([], "embedding_cosine", None), {"pairs"}),
        (engine.check_equivalence([("a", "b")] * 3, "embedding_cosine", None), {"pairs"}),
        (engine.check_equivalence([("a", " "), ("", "b")], "embedding_cosine", None), {"pairs[0].second", "pairs[1].first"}),
        (engine.check_equivalence([("a", "b")], None, None), {"method"}),
        (engine.check_equivalence([("a", "b")], "embedding_cosine", -1.5), {"threshold"}),
        (engine.check_equivalence([("a", "b")], "nli_entailment", -0.1), {"threshold"}),
        (engine.embed([]), {"texts"}),
        (engine.embed(["a", "b", "c"]), {"texts"}),
        (engine.embed(["a", "\n"]), {"texts[1]"}),
    ]
    for call, fields in cases:
        with pytest.raises(InvalidArgument) as caught:
            await call
        assert set(dict(caught.value.field_violations)) == fields


TOY_VOCAB = {1: "The vote was delayed.", 2: SOURCE, 3: " ", 4: "again ", 5: '"Sure!"', 6: "Paraphrase: "}


class ToyTokenizer:
    def decode(self, ids, skip_special_tokens=True):
        return "".join(TOY_VOCAB[i] for i in ids)


def test_collect_counts_empty_and_degenerate_and_keeps_order():
    engine = _engine()
    engine.generator = types.SimpleNamespace(tokenizer=ToyTokenizer(), identity="identity")
    rows = [
        GeneratedRow((6, 1), FINISH_STOP, 3),
        GeneratedRow((3,), FINISH_STOP, 2),
        GeneratedRow((2,), FINISH_STOP, 2),
        GeneratedRow((4,) * 12, FINISH_LENGTH, 12),
        GeneratedRow((1,), FINISH_LENGTH, 1),
        GeneratedRow((5,), FINISH_STOP, 2),
    ]
    result = engine.collect_candidates(ProposeSpec(SOURCE, "paraphrase", n=6), "PROMPT", 99, rows)
    assert [(c.text, c.generated_tokens, c.finish) for c in result.candidates] == [
        ("The vote was delayed.", 3, FINISH_STOP),
        ("The vote was delayed.", 1, FINISH_LENGTH),
    ]
    assert (result.dropped_empty, result.dropped_degenerate) == (2, 2)
    assert result.dropped == {"empty": 2, "degenerate": 2}
    assert (result.seed, result.prompt, result.model) == (99, "PROMPT", "identity")


def test_cosine_scores_match_a_per_pair_computation():
    a, b = torch.randn(5, 8, generator=torch.Generator().manual_seed(1)), torch.randn(5, 8)
    expected = [float(torch.dot(x, y) / (x.norm() * y.norm())) for x, y in zip(a, b, strict=True)]
    assert torch.allclose(equivalence.cosine_scores(a, b), torch.tensor(expected), atol=1e-6)
    assert float(equivalence.cosine_scores(a[:1], a[:1])[0]) == pytest.approx(1.0, abs=1e-6)


def test_verdicts():
    cos = equivalence.cosine_verdicts([0.9, 0.7, 0.2], 0.7)
    assert [v.equivalent for v in cos] == [True, True, False] and cos[0].entailment_forward is None
    nli = equivalence.nli_verdicts([0.9, 0.95], [0.4, 0.8], 0.5)
    assert [(v.score, v.equivalent, v.entailment_forward, v.entailment_backward) for v in nli] == [
        (0.4, False, 0.9, 0.4),
        (0.8, True, 0.95, 0.8),
    ]


@pytest.mark.parametrize(
    "id2label, index",
    [
        ({0: "contradiction", 1: "neutral", 2: "entailment"}, 2),
        ({"0": "ENTAILMENT", "1": "NOT_ENTAILMENT"}, 0),
        ({0: "Contradiction", 1: "Entailment", 2: "Neutral"}, 1),
    ],
)
def test_entailment_label_index(id2label, index):
    assert equivalence.entailment_label_index(id2label) == index


@pytest.mark.parametrize("id2label", [{0: "LABEL_0", 1: "LABEL_1"}, {0: "human", 1: "machine"}])
def test_non_nli_classifier_is_refused(id2label):
    with pytest.raises(IncompatibleModelError, match="entailment"):
        equivalence.entailment_label_index(id2label)


def test_token_counts_flag_truncation():
    class Tok:
        def __call__(self, texts, truncation):
            return {"input_ids": [[0] * (len(t.split()) + 2) for t in texts]}

    assert equivalence.token_counts(Tok(), ["a b c", "a " * 20], 10) == [(5, False), (10, True)]
    assert equivalence.token_counts(Tok(), ["a b"], None) == [(4, False)]


@pytest.fixture(scope="module")
def config_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("proposer-configs")
    llama = LlamaConfig(
        vocab_size=32000,
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=16,
        num_attention_heads=8,
        num_key_value_heads=8,
        tie_word_embeddings=False,
    )
    llama.architectures = ["LlamaForCausalLM"]
    llama.save_pretrained(root / "llama")
    BertConfig(
        vocab_size=1000, hidden_size=64, num_hidden_layers=1, num_attention_heads=2, intermediate_size=128
    ).save_pretrained(root / "bert")
    return root


def _plan(folders, **settings):
    plan_placement(
        load_config(
            ProposerConfig,
            "proposer",
            env={},
            model=str(folders / "llama"),
            embedding_model=str(folders / "bert"),
            device="cpu",
            dtype="float32",
            **settings,
        )
    )


def test_placement_refuses_what_exceeds_declared_memory_and_quantisation_makes_it_fit(config_folders):
    # ~334M parameters (269M in linear layers): with 20% headroom fp32 needs ~1.6 GB, int8 ~0.64 GB, nf4 ~0.5 GB.
    with pytest.raises(PlacementError, match=r"memory_limit_gb declares 0.55 GB") as caught:
        _plan(config_folders, memory_limit_gb=0.55)
    assert "generator" in str(caught.value) and "quantize=none" in str(caught.value)
    assert caught.value.required_bytes > caught.value.available_bytes == 550_000_000
    with pytest.raises(PlacementError, match="quantize=int8"):
        _plan(config_folders, memory_limit_gb=0.55, quantize="int8")
    _plan(config_folders, memory_limit_gb=0.55, quantize="nf4")
    _plan(config_folders, memory_limit_gb=0.7, quantize="int8")
    _plan(config_folders, memory_limit_gb=2.0)
    _plan(config_folders, memory_limit_gb=0.0)  # nothing declared: each load checks the measured free memory


@pytest.mark.parametrize(
    "settings, field",
    [
        ({"memory_limit_gb": -1.0}, "memory_limit_gb"),
        ({"cosine_threshold": 1.5}, "cosine_threshold"),
        ({"nli_threshold": -0.1}, "nli_threshold"),
        ({"default_top_p": 0.0}, "default_top_p"),
        ({"default_max_new_tokens": 600}, "default_max_new_tokens"),
        ({"max_candidates": 0}, "max_candidates"),
        ({"quantize": "int4"}, "quantize"),
        ({"embedding_model": " "}, "embedding_model"),
    ],
)
def test_bad_config_names_the_field(settings, field):
    with pytest.raises(ConfigError) as caught:
        load_config(ProposerConfig, "proposer", env={}, **settings)
    assert field in str(caught.value)
