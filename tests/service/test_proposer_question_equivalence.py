"""The stricter meaning check for question rewordings (CheckEquivalence QUESTION) on a small labelled set.

The set is written here, general knowledge, not drawn from any benchmark: true rephrasings, near-misses that change the
meaning, statements and answers. The default (no NLI model: form checks, content alignment, MiniLM cosine) must
reject every statement and every answer; its accuracy on the whole set is printed and bounded below. With an NLI
folder (a tiny random DeBERTa-v2 with entailment/neutral/contradiction labels) the same form checks run and
bidirectional entailment scores.
"""

from __future__ import annotations

import grpc
import pytest
import torch
from transformers import AutoTokenizer, DebertaV2Config, DebertaV2ForSequenceClassification

from crucible import models
from crucible.api.proposer.v1 import proposer_service_pb2 as pb
from crucible.api.proposer.v1 import proposer_service_pb2_grpc as pb_grpc
from crucible.proposer.equivalence import entailment_probabilities
from tests.service.test_proposer import _config, _serve, folders  # noqa: F401  (folders is a fixture)

QUESTION = pb.EQUIVALENCE_METHOD_QUESTION

PLANETS = ("Venus", "Earth", "Mercury", "Mars")
BOILING = ("90 degrees Celsius", "100 degrees Celsius", "110 degrees Celsius", "120 degrees Celsius")
PAINTERS = ("Michelangelo", "Leonardo da Vinci", "Raphael", "Donatello")
GASES = ("Oxygen", "Carbon dioxide", "Nitrogen", "Helium")
ORGANS = ("the liver", "the skin", "the brain", "the heart")
PRIMES = ("2", "3", "9", "11")
TIMES = ("54", "56", "58", "64")
BONES = ("106", "206", "306", "406")
ENZYMES = ("They are proteins", "They speed up reactions", "They are used up in reactions", "They have active sites")
WAR = ("1905", "1914", "1918", "1939")
NONE: tuple[str, ...] = ()

Q_PLANET = "Which planet is closest to the Sun?"
Q_BOIL = "What is the boiling point of water at sea level?"
Q_PAINT = "Who painted the Mona Lisa?"
Q_GAS = "Which gas do plants absorb from the air for photosynthesis?"
Q_ORGAN = "The largest organ of the human body is"
Q_PRIME = "Which of the following is NOT a prime number?"
Q_TIMES = "What is 7 multiplied by 8?"
Q_BONES = "How many bones are in the adult human body?"
Q_ENZYME = "Which of the following statements about enzymes is false?"
Q_WAR = "In which year did the First World War begin?"
Q_RBC = "What is the main function of red blood cells?"
Q_TIDES = "What is the primary cause of ocean tides?"
Q_IRON = "Which element has the chemical symbol Fe?"
Q_PROFIT = "A company's total revenue minus its total costs is called its"

#: (original, candidate, options, kind); kind "rephrasing" is equivalent, every other kind is not.
LABELLED: list[tuple[str, str, tuple[str, ...], str]] = [
    (Q_PLANET, "Which planet lies nearest to the Sun?", PLANETS, "rephrasing"),
    (Q_BOIL, "At sea level, at what temperature does water boil?", BOILING, "rephrasing"),
    (Q_PAINT, "Which artist painted the Mona Lisa?", PAINTERS, "rephrasing"),
    (Q_GAS, "For photosynthesis, which gas do plants take in from the air?", GASES, "rephrasing"),
    (Q_ORGAN, "Which organ of the human body is the largest?", ORGANS, "rephrasing"),
    (Q_RBC, "What do red blood cells mainly do?", NONE, "rephrasing"),
    (Q_PRIME, "Which of these numbers is not prime?", PRIMES, "rephrasing"),
    (Q_WAR, "What year did the First World War begin in?", WAR, "rephrasing"),
    (Q_BONES, "What is the number of bones in the adult human body?", BONES, "rephrasing"),
    (Q_ENZYME, "Which statement regarding enzymes is NOT true?", ENZYMES, "rephrasing"),
    (Q_PROFIT, "What is a company's total revenue minus its total costs called?", NONE, "rephrasing"),
    (Q_TIDES, "What mainly causes the tides of the ocean?", NONE, "rephrasing"),
    (Q_IRON, "Which element is represented by the chemical symbol Fe?", NONE, "rephrasing"),
    (Q_TIMES, "What do you get when you multiply 7 by 8?", TIMES, "rephrasing"),
    (Q_PLANET, "Which planet is farthest from the Sun?", PLANETS, "near_miss"),
    (Q_PRIME, "Which of the following is a prime number?", PRIMES, "near_miss"),
    (Q_TIMES, "What is 7 multiplied by 9?", TIMES, "near_miss"),
    (Q_ENZYME, "Which of the following statements about enzymes is true?", ENZYMES, "near_miss"),
    (Q_WAR, "In which year did the First World War end?", WAR, "near_miss"),
    (Q_BOIL, "What is the freezing point of water at sea level?", BOILING, "near_miss"),
    (Q_PAINT, "Who stole the Mona Lisa?", PAINTERS, "near_miss"),
    (Q_BONES, "How many bones are in a newborn baby's body?", BONES, "near_miss"),
    (Q_GAS, "Which gas do plants release into the air during photosynthesis?", GASES, "near_miss"),
    (Q_ORGAN, "The smallest organ of the human body is", ORGANS, "near_miss"),
    (Q_PLANET, "The planets orbit the Sun at different distances.", PLANETS, "statement"),
    (Q_RBC, "Red blood cells have an important function in the body.", NONE, "statement"),
    (Q_PRIME, "Prime numbers have exactly two divisors.", PRIMES, "statement"),
    (Q_PAINT, "The Mona Lisa is a famous painting that hangs in the Louvre.", PAINTERS, "statement"),
    (Q_BOIL, "Water boils at a certain temperature at sea level.", BOILING, "statement"),
    (Q_ORGAN, "The human body has many organs of different sizes.", ORGANS, "statement"),
    (Q_BONES, "The adult human body contains many bones.", BONES, "statement"),
    (Q_TIDES, "Ocean tides are caused by several forces acting on the water.", NONE, "statement"),
    (Q_PLANET, "The answer is C. Mercury", PLANETS, "answer"),
    (Q_PLANET, "Mercury", PLANETS, "answer"),
    (Q_TIMES, "56", TIMES, "answer"),
    (Q_PAINT, "Leonardo da Vinci painted the Mona Lisa.", PAINTERS, "answer"),
    (Q_GAS, "Option B: Carbon dioxide", GASES, "answer"),
    (Q_ORGAN, "the skin", ORGANS, "answer"),
    (Q_PRIME, "C", PRIMES, "answer"),
    (Q_BOIL, "The correct answer is 100 degrees Celsius.", BOILING, "answer"),
    (Q_IRON, "Fe is the symbol of iron.", NONE, "answer"),
]

#: Accuracy the default check must keep on LABELLED. It measured 0.951 (39/41) when written: it accepts two
#: near-misses that swap a word an embedding cannot tell apart ("boiling" -> "freezing", "painted" -> "stole").
#: Some opposite pairs of the surface check (closest/farthest, begin/end, absorb/release) were added while writing
#: this set, so its near-miss score flatters the check on unseen wording.
MIN_ACCURACY = 0.85


def _request(rows) -> pb.CheckEquivalenceRequest:
    return pb.CheckEquivalenceRequest(
        pairs=[pb.TextPair(first=a, second=b, options=list(options)) for a, b, options, _ in rows], method=QUESTION
    )


@pytest.fixture(scope="module")
def nli_folder(folders, tmp_path_factory):  # noqa: F811
    path = tmp_path_factory.mktemp("nli") / "tiny-deberta-nli"
    labels = {0: "entailment", 1: "neutral", 2: "contradiction"}
    torch.manual_seed(0)
    DebertaV2ForSequenceClassification(
        DebertaV2Config(
            vocab_size=30522,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=512,
            type_vocab_size=0,
            id2label=labels,
            label2id={v: k for k, v in labels.items()},
        )
    ).save_pretrained(path)
    AutoTokenizer.from_pretrained(folders["minilm"]).save_pretrained(path)
    return str(path)


async def test_default_question_check_rejects_every_statement_and_answer(folders, capsys):  # noqa: F811
    server = await _serve(_config(folders))
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb_grpc.ProposerServiceStub(channel)
            reply = await stub.CheckEquivalence(_request(LABELLED), timeout=120)
    finally:
        await server.stop(0)
    assert reply.method == QUESTION and reply.similarity_method == pb.EQUIVALENCE_METHOD_EMBEDDING_COSINE
    assert reply.threshold == pytest.approx(0.7)
    by_kind: dict[str, list[bool]] = {}
    wrong = []
    for (first, second, _, kind), result in zip(LABELLED, reply.results, strict=True):
        right = result.equivalent == (kind == "rephrasing")
        by_kind.setdefault(kind, []).append(right)
        if not right:
            wrong.append((kind, second, round(result.score, 3), pb.DropReason.Name(result.form_violation)))
        if result.form_violation:
            assert not result.equivalent and result.score == 0.0 and result.form_detail
    accuracy = sum(sum(v) for v in by_kind.values()) / len(LABELLED)
    with capsys.disabled():
        print(
            f"\nQUESTION check (form + content + cosine 0.7) on {len(LABELLED)} labelled pairs: accuracy {accuracy:.3f}; "
            + ", ".join(f"{k} {sum(v)}/{len(v)}" for k, v in by_kind.items())
            + f"; wrong: {wrong}"
        )
    assert all(by_kind["statement"]) and all(by_kind["answer"]), wrong
    assert accuracy >= MIN_ACCURACY, wrong


async def test_with_an_nli_folder_the_question_check_uses_bidirectional_entailment(folders, nli_folder):  # noqa: F811
    server = await _serve(_config(folders, nli_model=nli_folder))
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb_grpc.ProposerServiceStub(channel)
            reply = await stub.CheckEquivalence(_request(LABELLED), timeout=120)
            info = await stub.GetInfo(pb.GetInfoRequest(), timeout=30)
    finally:
        await server.stop(0)
    assert reply.similarity_method == pb.EQUIVALENCE_METHOD_NLI_ENTAILMENT and reply.model.name == nli_folder
    question = [e for e in info.equivalence if e.method == QUESTION]
    assert question and question[0].model.name == nli_folder
    classifier = models.load_sequence_classifier(nli_folder, device="cpu", dtype="float32")
    for (first, second, _, kind), result in zip(LABELLED, reply.results, strict=True):
        if kind in ("statement", "answer"):
            assert not result.equivalent and result.form_violation, (kind, second)
        if result.form_violation:
            continue
        forward, backward = entailment_probabilities(classifier, [first, second], [second, first]).tolist()
        assert result.entailment_forward == pytest.approx(forward, abs=1e-5)
        assert result.entailment_backward == pytest.approx(backward, abs=1e-5)
        assert result.score == pytest.approx(min(forward, backward), abs=1e-5)
        assert result.equivalent == (result.score >= reply.threshold)
