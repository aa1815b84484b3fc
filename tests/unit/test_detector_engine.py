"""The detector core on tiny random models saved as local folders: input checks, batching, members, caches.

`tiny_lm_folder` and `tiny_classifier_folder` are also used by the detector service tests.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from crucible.detector.cache import LruCache, SqliteCache, cache_key
from crucible.detector.config import DetectorConfig
from crucible.detector.core import Detector, RawScores, machine_label_index
from crucible.detector.criterion import DEFAULT_CHUNK_ELEMENTS, VocabularyMismatchError
from crucible.runtime.errors import InvalidArgument

CORPUS = [
    "The quick brown fox jumps over the lazy dog while the farmer watches from the porch. " * 2,
    "Machine-written text tends to be fluent, plain and predictable; human writing wanders. " * 2,
    "Numbers 0123456789, punctuation !?;:'\"()[]{} and accents: café, naïve, über, 你好.",
]


def _tokenizer(vocab: int, max_length: int = 4096):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=["<pad>", "<s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="<s>", model_max_length=max_length
    )


def tiny_lm_folder(path: Path, *, seed: int = 0, vocab: int = 400, layers: int = 2) -> Path:
    """A random Llama causal LM with a byte-level BPE tokenizer trained on CORPUS, saved as a local HF folder."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = _tokenizer(vocab)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=0.1,
        tie_word_embeddings=False,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def tiny_classifier_folder(path: Path, *, labels: dict[int, str] | None = None, max_length: int = 64) -> Path:
    """A random RoBERTa sequence classifier (id2label Real/Fake by default) with its own small tokenizer."""
    from transformers import RobertaConfig, RobertaForSequenceClassification

    tokenizer = _tokenizer(300, max_length=max_length)
    labels = labels or {0: "Real", 1: "Fake"}
    torch.manual_seed(3)
    config = RobertaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=max_length + 2,
        pad_token_id=0,
        id2label=labels,
        label2id={v: k for k, v in labels.items()},
        architectures=["RobertaForSequenceClassification"],
    )
    RobertaForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("detector-models")
    return {
        "lm": tiny_lm_folder(root / "lm-a", seed=0),
        "lm_b": tiny_lm_folder(root / "lm-b", seed=1, layers=1),
        "other_vocab": tiny_lm_folder(root / "lm-c", seed=2, vocab=350),
        "classifier": tiny_classifier_folder(root / "clf"),
    }


def _settings(folders, **kw) -> DetectorConfig:
    base = dict(model=str(folders["lm"]), device="cpu", dtype="float32", max_tokens=64, max_texts_per_call=8, max_text_bytes=2000)
    base.update(kw)
    return DetectorConfig(**base)


@pytest.fixture(scope="module")
def detector(folders) -> Detector:
    return Detector.load(_settings(folders, classifier_model=str(folders["classifier"])))


TEXTS = [
    "The quick brown fox.",
    "Machine-written text tends to be fluent, plain and predictable.",
    "Hi there",
    "Numbers 0123456789 and accents: café, naïve. " * 3,
]


def test_batch_scores_equal_one_text_at_a_time(detector):
    prepared = detector.prepare(TEXTS, classifier=True)
    together = detector.score(prepared)
    for item, scores in zip(prepared, together, strict=True):
        alone = detector.score([item])[0]
        assert scores.criterion == pytest.approx(alone.criterion, rel=1e-4, abs=1e-5)
        assert scores.perplexity == pytest.approx(alone.perplexity, rel=1e-4)
        assert scores.binoculars == pytest.approx(alone.binoculars, rel=1e-4)
        assert scores.classifier == pytest.approx(alone.classifier, rel=1e-4)
        assert scores.token_count == len(item.ids) and not scores.truncated


def test_left_padding_gives_the_same_scores(folders, detector):
    left = Detector(_settings(folders, padding_side="left"), detector.scoring)
    prepared = detector.prepare(TEXTS, classifier=False)
    for a, b in zip(detector.score(prepared), left.score(prepared), strict=True):
        assert a.criterion == pytest.approx(b.criterion, rel=1e-4, abs=1e-5)


def test_long_text_is_truncated_and_flagged(detector):
    long_text = "The quick brown fox jumps over the lazy dog. " * 40
    (item,) = detector.prepare([long_text], classifier=True)
    assert item.truncated and len(item.ids) == 64
    (scores,) = detector.score([item])
    assert scores.truncated and scores.token_count == 64
    assert scores.classifier_truncated and scores.classifier_tokens == 64  # the classifier's own limit


@pytest.mark.parametrize(
    ("texts", "field", "reason"),
    [
        ([], "texts", "NO_TEXTS"),
        (["ok text"] * 9, "texts", "TOO_MANY_TEXTS"),
        (["fine text", "   \n\t "], "texts[1]", "EMPTY_TEXT"),
        (["fine text", "", "x"], "texts[1]", "EMPTY_TEXT"),
        (["fine text", "bell \x07 here"], "texts[1]", "CONTROL_CHARACTER"),
        (["fine text", "nul \x00"], "texts[1]", "CONTROL_CHARACTER"),
        (["a" * 2001], "texts[0]", "TEXT_TOO_LARGE"),
        (["fine text", "é" * 1001], "texts[1]", "TEXT_TOO_LARGE"),
        (["fine text", "a"], "texts[1]", "TOO_FEW_TOKENS"),
    ],
)
def test_bad_input_names_the_offending_index(detector, texts, field, reason):
    with pytest.raises(InvalidArgument) as info:
        detector.prepare(texts, classifier=False)
    assert info.value.reason == reason
    assert info.value.field_violations[0][0] == field


def test_tabs_newlines_and_unicode_are_accepted(detector):
    (item,) = detector.prepare(["line one\n\tline two\r\n café 你好"], classifier=False)
    assert len(item.ids) > 2


def test_stream_indices_continue_from_first_index(detector):
    with pytest.raises(InvalidArgument) as info:
        detector.prepare(["fine text", ""], classifier=False, first_index=200)
    assert info.value.field_violations[0][0] == "texts[201]"


def test_members_checked_against_the_enabled_ones(folders, detector):
    assert detector.enabled_members == ("fast_detectgpt", "binoculars", "classifier")
    assert detector.check_members([]) is True
    assert detector.check_members(["binoculars"]) is False
    plain = Detector(_settings(folders, binoculars=False), detector.scoring)
    with pytest.raises(InvalidArgument) as info:
        plain.check_members(["fast_detectgpt", "classifier"])
    assert info.value.field_violations[0][0] == "members[1]" and info.value.reason == "MEMBER_NOT_ENABLED"


def test_one_model_plays_both_binoculars_roles_and_says_so(detector):
    binoculars = next(m for m in detector.members if m.member == "binoculars")
    assert binoculars.single_model
    assert any("one model for observer and performer" in note for note in binoculars.notes)
    assert detector.identities["observer"] == detector.identities["performer"] == detector.scoring.identity


def test_two_models_sharing_a_tokenizer(folders, detector):
    pair = Detector.load(_settings(folders, sampling_model=str(folders["lm_b"])))
    assert not pair.single_model and pair.identities["sampling"].name == str(folders["lm_b"])
    prepared = pair.prepare(TEXTS, classifier=False)
    single = detector.score(prepared)
    both = pair.score(prepared)
    assert all(b.perplexity == pytest.approx(s.perplexity, rel=1e-4) for b, s in zip(both, single, strict=True))
    assert any(abs(b.criterion - s.criterion) > 1e-3 for b, s in zip(both, single, strict=True))
    assert pair.fingerprint != detector.fingerprint


def test_models_with_different_tokenizers_are_refused(folders):
    with pytest.raises(VocabularyMismatchError, match="do not share a tokenizer"):
        Detector.load(_settings(folders, sampling_model=str(folders["other_vocab"])))


def test_machine_label_comes_from_id2label():
    assert machine_label_index({0: "Fake", 1: "Real"}) == (0, "Fake")
    assert machine_label_index({"0": "human", "1": "machine"}) == (1, "machine")
    assert machine_label_index({0: "Fake", 1: "Real"}, "real") == (1, "Real")
    with pytest.raises(ValueError, match="set classifier_machine_label"):
        machine_label_index({0: "LABEL_0", 1: "LABEL_1"})
    with pytest.raises(ValueError, match="not among"):
        machine_label_index({0: "Fake", 1: "Real"}, "Bot")


def test_classifier_probability_is_the_machine_label_softmax(folders, detector):
    swapped = tiny_classifier_folder(folders["classifier"].parent / "clf-swapped", labels={0: "Fake", 1: "Real"})
    other = Detector.load(_settings(folders, classifier_model=str(swapped)))
    assert other.machine_label == "Fake" and other.machine_index == 0
    assert detector.machine_label == "Fake" and detector.machine_index == 1
    (p,) = other.classify(["The quick brown fox."])
    enc = other.classifier.tokenizer(["The quick brown fox."], return_tensors="pt")
    with torch.inference_mode():
        want = torch.softmax(other.classifier.model(**enc).logits.float(), -1)[0, 0]
    assert p[0] == pytest.approx(float(want), rel=1e-5)


def test_lru_cache_evicts_least_recently_used():
    cache = LruCache(2)
    a, b, c = (RawScores(float(i), 1.0, 1.0, 3, False, -2.0, 1.5, 3.0) for i in range(3))
    cache.put("a", a)
    cache.put("b", b)
    assert cache.get("a") is a
    cache.put("c", c)
    assert cache.get("b") is None and cache.get("a") is a and len(cache) == 2
    disabled = LruCache(0)
    disabled.put("a", a)
    assert disabled.get("a") is None


def test_sqlite_cache_survives_reopening(tmp_path):
    path = tmp_path / "cache" / "detector.sqlite"
    key = cache_key("fp", "some text")
    assert key != cache_key("fp2", "some text") and key != cache_key("fp", "some text ")
    first = SqliteCache(path)
    scores = RawScores(1.5, 12.0, 0.8, 10, False, -2.5, 1.25, 3.5, 0.25, 9, False)
    first.put_many([(key, scores)])
    first.close()
    again = SqliteCache(path)
    assert again.get_many([key, "missing"]) == {key: scores}
    assert len(again) == 1
    again.close()


def test_the_criterion_chunk_default_is_the_service_setting() -> None:
    """One declaration: the core's default chunk bound is DetectorConfig's (they had drifted to 1<<21 vs 1<<22)."""
    assert DetectorConfig().stats_chunk_elements == DEFAULT_CHUNK_ELEMENTS == 1 << 22
