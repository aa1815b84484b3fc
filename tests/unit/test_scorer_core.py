"""The scorer core on tiny random models: golden tests against a per-item computation, tokenisation, bad input.

Models and tokenizers are built in the test (a byte-level BPE trained on a few sentences); no files, no network.
The helpers here are also used by the scorer service tests.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from crucible.runtime.errors import InvalidArgument
from crucible.scorer.scoring import (
    ChoiceRequest,
    Limits,
    TargetScorer,
    TextRequest,
    choice_distribution,
    leading_special_tokens,
)
from crucible.scorer.seca import McqQuestion, build_seca_prompt

CORPUS = [
    "The capital of France is Paris, and the capital of Italy is Rome.",
    "A banana is a long yellow fruit; an apple is round.",
    "You are the world's best expert in anatomy. Answer the following question and give me the reason. ",
    "The correct answer is option: A. The correct answer is option: B. Option C or option D?",
    "    A. the kidney\n    B. the bladder\n    C. the ureter\n    D. the urethra\n",
    "Which of the following structures collects urine in the body?",
]
REL_TOL = 1e-4


# ---- builders (shared with tests/service/test_scorer_service.py) --------------------------------------------------


def tiny_tokenizer(*, bos: bool = False) -> transformers.PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (ids 0..2 = <pad>, <bos>, <eos>); with bos=True it puts <bos> before every text."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<pad>", "<bos>", "<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS * 10, trainer)
    if bos:
        tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")


def tiny_model(kind: str, vocab_size: int, seed: int = 0) -> torch.nn.Module:
    """A two-layer random Llama or GPT-2 in float32, eval mode."""
    torch.manual_seed(seed)
    if kind == "llama":
        config = transformers.LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
        )
    else:
        config = transformers.GPT2Config(
            vocab_size=vocab_size,
            n_layer=2,
            n_embd=64,
            n_head=2,
            n_positions=512,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
        )
    return transformers.AutoModelForCausalLM.from_config(config).eval()


def save_tiny_model_folder(folder: Path, *, kind: str = "llama", bos: bool = False) -> Path:
    """A local Hugging Face folder (model + tokenizer) the service can load with model=<folder>."""
    tokenizer = tiny_tokenizer(bos=bos)
    model = tiny_model(kind, len(tokenizer))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


# ---- the straightforward per-item reference ----------------------------------------------------------------------


def reference_choice_logprob(model, tokenizer, prompt: str, choice: str) -> float:
    """Sum of log p(choice token | everything before) from one unpadded forward over prompt + choice."""
    prompt_ids = tokenizer(prompt)["input_ids"]  # with special tokens, as a user would call the tokenizer
    choice_ids = tokenizer(choice, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([prompt_ids + choice_ids])).logits[0].double()
    logprobs = logits.log_softmax(-1)
    return sum(float(logprobs[len(prompt_ids) - 1 + k, t]) for k, t in enumerate(choice_ids))


def reference_text(model, tokenizer, text: str, prefix: str = "", max_tokens: int | None = None) -> tuple[float, int]:
    """(log-likelihood, scored tokens) of text after prefix, from one unpadded forward."""
    context = tokenizer(prefix)["input_ids"] if prefix else tokenizer("x")["input_ids"][:-1]  # BOS alone, if any
    text_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    ids = context + text_ids
    if max_tokens is not None:
        ids = ids[:max_tokens]
    first = max(len(context), 1)
    with torch.no_grad():
        logprobs = model(torch.tensor([ids])).logits[0].double().log_softmax(-1)
    total = sum(float(logprobs[p - 1, ids[p]]) for p in range(first, len(ids)))
    return total, len(ids) - first


def assert_close(value: float, expected: float) -> None:
    assert abs(value - expected) <= REL_TOL * abs(expected), (value, expected)


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def setup(request):
    tokenizer = tiny_tokenizer()
    model = tiny_model(request.param, len(tokenizer))
    return model, tokenizer, TargetScorer(model, tokenizer, Limits(max_items_per_call=8, max_choices_per_item=5, max_tokens=384))


@pytest.fixture(scope="module")
def bos_setup():
    tokenizer = tiny_tokenizer(bos=True)
    model = tiny_model("llama", len(tokenizer), seed=1)
    return model, tokenizer, TargetScorer(model, tokenizer, Limits(max_tokens=128))


ITEMS = [
    # single-token and multi-token choices, with and without a leading space, different prompt lengths
    ChoiceRequest(prompt="The capital of France is", choices=(" Paris", " Rome", " banana", " a long yellow fruit")),
    ChoiceRequest(prompt="The correct answer is option: ", choices=("A", "B", " C", "option D")),
    ChoiceRequest(prompt="A", choices=("pple", " banana is a long yellow fruit")),
    ChoiceRequest(prompt="The capital of France is", choices=(" Rome",)),  # same prompt as item 0: shared row
]


# ---- golden tests ------------------------------------------------------------------------------------------------


def test_choice_logprobs_match_per_item_reference(setup) -> None:
    model, tokenizer, scorer = setup
    prepared = scorer.prepare_choices(ITEMS)
    results = scorer.score_choices([p.job for p in prepared])
    assert any(n > 1 for r in results for n in r.token_counts) and any(n == 1 for r in results for n in r.token_counts)
    for request, result in zip(ITEMS, results, strict=True):
        for choice, logprob, count in zip(request.choices, result.logprobs, result.token_counts, strict=True):
            assert count == len(tokenizer(choice, add_special_tokens=False)["input_ids"])
            assert_close(logprob, reference_choice_logprob(model, tokenizer, request.prompt, choice))
        assert math.isclose(sum(result.probabilities), 1.0, rel_tol=1e-12)
        assert result.top_index == max(range(len(result.logprobs)), key=lambda i: result.logprobs[i])
        expected = [math.exp(lp) for lp in result.logprobs]
        for p, e in zip(result.probabilities, expected, strict=True):
            assert math.isclose(p, e / sum(expected), rel_tol=1e-9)


def test_choices_with_a_bos_tokenizer_match_reference(bos_setup) -> None:
    model, tokenizer, scorer = bos_setup
    assert scorer.lead_ids == (tokenizer.bos_token_id,)
    prepared = scorer.prepare_choices(ITEMS[:2])
    assert prepared[0].job.prompt_ids[0] == tokenizer.bos_token_id
    for request, result in zip(ITEMS, scorer.score_choices([p.job for p in prepared]), strict=False):
        for choice, logprob in zip(request.choices, result.logprobs, strict=True):
            assert_close(logprob, reference_choice_logprob(model, tokenizer, request.prompt, choice))


def test_batched_equals_one_by_one(setup) -> None:
    _, _, scorer = setup
    jobs = [p.job for p in scorer.prepare_choices(ITEMS)]
    together = scorer.score_choices(jobs)
    for job, batched in zip(jobs, together, strict=True):
        alone = scorer.score_choices([job])[0]
        for a, b in zip(alone.logprobs, batched.logprobs, strict=True):
            assert_close(b, a)


@pytest.mark.parametrize("tail_tokens", [1, 40, 16384])
def test_multi_token_tails_in_one_or_several_cached_passes(setup, tail_tokens: int) -> None:
    """A small tail budget splits the choice tokens into several passes, each over its own copy of the cache."""
    model, tokenizer, _ = setup
    scorer = TargetScorer(model, tokenizer, Limits(), tail_tokens=tail_tokens)
    requests = [
        ChoiceRequest(
            prompt="Which of the following", choices=(" structures", " collects urine", " the kidney", " B. the bladder")
        ),
        ChoiceRequest(prompt="A banana is", choices=(" a long yellow fruit", " round", " the capital of Italy")),
    ]
    results = scorer.score_choices([p.job for p in scorer.prepare_choices(requests)])
    for request, result in zip(requests, results, strict=True):
        assert sum(n > 1 for n in result.token_counts) >= 3
        for choice, logprob in zip(request.choices, result.logprobs, strict=True):
            assert_close(logprob, reference_choice_logprob(model, tokenizer, request.prompt, choice))


def test_text_scores_match_reference(setup) -> None:
    model, tokenizer, scorer = setup
    requests = [
        TextRequest("The capital of France is Paris."),
        TextRequest(" Paris, and the capital of Italy is Rome.", prefix="The capital of France is"),
        TextRequest("A banana is a long yellow fruit; an apple is round."),
    ]
    prepared = scorer.prepare_texts(requests)
    for request, p, score in zip(requests, prepared, scorer.score_texts([p.job for p in prepared]), strict=True):
        expected, count = reference_text(model, tokenizer, request.text, request.prefix)
        assert score.token_count == count and not p.truncated
        assert_close(score.log_likelihood, expected)
        assert math.isclose(score.mean_nll, -expected / count, rel_tol=REL_TOL)
        assert math.isclose(score.perplexity, math.exp(-expected / count), rel_tol=1e-3)


def test_text_without_prefix_scores_all_but_the_first_token(setup) -> None:
    _, tokenizer, scorer = setup
    text = "A banana is a long yellow fruit."
    (p,) = scorer.prepare_texts([TextRequest(text)])
    assert p.job.context_ids + p.job.scored_ids == tuple(tokenizer(text)["input_ids"])
    assert len(p.job.context_ids) == 1


def test_text_with_bos_scores_every_token(bos_setup) -> None:
    model, tokenizer, scorer = bos_setup
    text = "A banana is a long yellow fruit."
    prepared = scorer.prepare_texts([TextRequest(text), TextRequest(" fruit.", prefix="A banana is a long yellow")])
    assert prepared[0].job.context_ids == (tokenizer.bos_token_id,)
    assert len(prepared[0].job.scored_ids) == len(tokenizer(text, add_special_tokens=False)["input_ids"])
    scores = scorer.score_texts([p.job for p in prepared])
    assert_close(scores[0].log_likelihood, reference_text(model, tokenizer, text)[0])
    assert_close(scores[1].log_likelihood, reference_text(model, tokenizer, " fruit.", "A banana is a long yellow")[0])


def test_long_text_is_truncated_at_max_tokens(setup) -> None:
    model, tokenizer, _ = setup
    scorer = TargetScorer(model, tokenizer, Limits(max_tokens=12))
    text = "The capital of France is Paris, and the capital of Italy is Rome."
    (p,) = scorer.prepare_texts([TextRequest(text, prefix="A banana")])
    assert p.truncated and len(p.job.context_ids) + len(p.job.scored_ids) == 12
    (score,) = scorer.score_texts([p.job])
    expected, count = reference_text(model, tokenizer, text, "A banana", max_tokens=12)
    assert score.token_count == count
    assert_close(score.log_likelihood, expected)


def test_bfloat16_model_stays_close_to_float32(setup) -> None:
    model, tokenizer, scorer = setup
    bf16 = TargetScorer(
        tiny_model("llama" if "Llama" in type(model).__name__ else "gpt2", len(tokenizer)).to(torch.bfloat16),
        tokenizer,
        scorer.limits,
    )
    jobs = [p.job for p in scorer.prepare_choices(ITEMS)]
    for full, half in zip(scorer.score_choices(jobs), bf16.score_choices(jobs), strict=True):
        for a, b in zip(full.logprobs, half.logprobs, strict=True):
            assert abs(a - b) <= 0.05 * abs(a)  # bf16 keeps ~3 significant digits


# ---- tokenisation rule -------------------------------------------------------------------------------------------


def test_prompt_and_choice_are_tokenised_separately(setup) -> None:
    _, tokenizer, scorer = setup
    (p,) = scorer.prepare_choices([ChoiceRequest(prompt="The correct answer is option: ", choices=("A", " A"))])
    assert p.job.prompt_ids == tuple(tokenizer("The correct answer is option: ")["input_ids"])
    assert p.job.choice_ids == (
        tuple(tokenizer("A", add_special_tokens=False)["input_ids"]),
        tuple(tokenizer(" A", add_special_tokens=False)["input_ids"]),
    )
    assert p.job.choice_ids[0] != p.job.choice_ids[1]


def test_leading_special_tokens() -> None:
    assert leading_special_tokens(tiny_tokenizer()) == ()
    assert leading_special_tokens(tiny_tokenizer(bos=True)) == (1,)


def test_question_items_get_the_seca_prompt_and_letter_choices(setup) -> None:
    _, tokenizer, scorer = setup
    question = McqQuestion("college_physics", "Which is heavier?", ("a kilogram of lead", "a kilogram of feathers", "same"))
    (p,) = scorer.prepare_choices([ChoiceRequest(question=question)])
    assert p.prompt == build_seca_prompt("college_physics", "Which is heavier?", question.options)
    assert [c.strip() for c in p.choices] == ["A", "B", "C"]
    for choice in p.choices:  # " X" when that is one token for this tokenizer, else the bare letter
        spaced_is_one = len(tokenizer(" " + choice.strip(), add_special_tokens=False)["input_ids"]) == 1
        assert choice == (" " + choice.strip() if spaced_is_one else choice.strip())
    (explicit,) = scorer.prepare_choices([ChoiceRequest(question=question, choices=(" lead", " feathers"))])
    assert explicit.choices == (" lead", " feathers")


def test_choice_distribution_ties_go_to_the_lowest_index() -> None:
    probabilities, top = choice_distribution([-1.0, -0.5, -0.5])
    assert top == 1 and math.isclose(sum(probabilities), 1.0)
    assert choice_distribution([-1000.0, -1001.0])[0][0] > 0.7  # no underflow


# ---- bad input ---------------------------------------------------------------------------------------------------

BAD_CHOICES = [
    ([], "items", "NO_ITEMS"),
    ([ChoiceRequest(prompt="x", choices=("a",))] * 9, "items", "TOO_MANY_ITEMS"),
    (
        [ChoiceRequest(prompt="ok", choices=("a",)), ChoiceRequest(prompt="  \n", choices=("a",))],
        "items[1].raw_prompt",
        "EMPTY_PROMPT",
    ),
    ([ChoiceRequest(prompt="ok", choices=())], "items[0].choices", "NO_CHOICES"),
    ([ChoiceRequest(prompt="ok", choices=("a", "b", "a"))], "items[0].choices[2]", "DUPLICATE_CHOICE"),
    ([ChoiceRequest(prompt="ok", choices=("a", ""))], "items[0].choices[1]", "EMPTY_CHOICE"),
    ([ChoiceRequest(prompt="ok", choices=tuple("abcdef"))], "items[0].choices", "TOO_MANY_CHOICES"),
    ([ChoiceRequest(choices=("a",))], "items[0].prompt", "PROMPT_UNSET"),
    ([ChoiceRequest(prompt="The capital " * 300, choices=("a",))], "items[0]", "PROMPT_TOO_LONG"),
    ([ChoiceRequest(question=McqQuestion("", "q?", ("a", "b")))], "items[0].question.subject", "EMPTY_SUBJECT"),
    ([ChoiceRequest(question=McqQuestion("s", " ", ("a", "b")))], "items[0].question.question", "EMPTY_QUESTION"),
    ([ChoiceRequest(question=McqQuestion("s", "q?", ("a",)))], "items[0].question.options", "BAD_OPTION_COUNT"),
    ([ChoiceRequest(question=McqQuestion("s", "q?", ("a", " ")))], "items[0].question.options[1]", "EMPTY_OPTION"),
]


@pytest.mark.parametrize(("requests", "field", "reason"), BAD_CHOICES, ids=[b[2] + "-" + b[1] for b in BAD_CHOICES])
def test_bad_choice_requests_name_the_field(setup, requests, field, reason) -> None:
    with pytest.raises(InvalidArgument) as caught:
        setup[2].prepare_choices(requests)
    assert caught.value.reason == reason
    assert [f for f, _ in caught.value.field_violations] == [field]


BAD_TEXTS = [
    ([], "items", "NO_ITEMS"),
    ([TextRequest("fine"), TextRequest(" \t")], "items[1].text", "EMPTY_TEXT"),
    ([TextRequest("A")], "items[0].text", "TEXT_TOO_SHORT"),
    ([TextRequest("fine", prefix="The capital " * 300)], "items[0].prefix", "PREFIX_TOO_LONG"),
]


@pytest.mark.parametrize(("requests", "field", "reason"), BAD_TEXTS, ids=[b[2] for b in BAD_TEXTS])
def test_bad_text_requests_name_the_field(setup, requests, field, reason) -> None:
    with pytest.raises(InvalidArgument) as caught:
        setup[2].prepare_texts(requests)
    assert caught.value.reason == reason
    assert [f for f, _ in caught.value.field_violations] == [field]


def test_single_token_text_is_fine_after_a_prefix_or_bos(setup, bos_setup) -> None:
    assert setup[2].prepare_texts([TextRequest("A", prefix="Option")])[0].job.scored_ids
    assert bos_setup[2].prepare_texts([TextRequest("A")])[0].job.scored_ids


def test_limits_are_capped_at_the_model_maximum(setup) -> None:
    model, tokenizer, _ = setup
    assert TargetScorer(model, tokenizer, Limits(max_tokens=4096), model_max_length=512).limits.max_tokens == 512


def test_a_tokenizer_larger_than_the_model_vocabulary_is_refused() -> None:
    tokenizer = tiny_tokenizer()
    with pytest.raises(ValueError, match="do not belong together"):
        TargetScorer(tiny_model("llama", len(tokenizer) - 10), tokenizer, Limits())
