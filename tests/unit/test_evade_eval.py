"""crucible.clients.evade_eval's metrics on a tiny fixture: AUROC with ties, TPR at 1% FPR, member orientation,
near-copy share, and the inputs (detect halves, bounds, flags). The mesh run is in tests/e2e/test_evade_eval.py.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import math
from pathlib import Path

import pytest

from crucible.clients import evade_eval as ev
from crucible.clients.detector import Detection, MemberScore


def _det(
    criterion: float, probability: float | None, binoculars: float, *, ppl: float = 30.0, reliable: bool = True
) -> Detection:
    members = {
        "fast_detectgpt": MemberScore("fast_detectgpt", criterion, None, 50, False),
        "binoculars": MemberScore("binoculars", binoculars, None, 50, False),
    }
    return Detection(0, criterion, probability, ppl, 50, False, False, members, 50, reliable)


def test_auroc_matches_the_pairwise_definition_with_ties():
    assert ev.auroc([0, 1], [2, 3]) == 1.0
    assert ev.auroc([2, 3], [0, 1]) == 0.0
    assert ev.auroc([1, 1], [1, 1]) == 0.5
    neg, pos = [0.1, 0.4, 0.4, 0.7], [0.4, 0.5, 0.9]
    pairs = [1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg]
    assert ev.auroc(neg, pos) == pytest.approx(sum(pairs) / len(pairs))
    with pytest.raises(ValueError):
        ev.auroc([], [1.0])


def test_tpr_at_fpr_uses_the_threshold_that_flags_at_most_that_share_of_humans():
    human = [i / 100 for i in range(100)]  # 0.00 .. 0.99
    # At 1% FPR one human (0.99) may be flagged: the threshold is the second highest, 0.98.
    assert ev.tpr_at_fpr(human, [0.985, 0.5, 0.99, 1.2], 0.01) == pytest.approx(3 / 4)
    assert ev.tpr_at_fpr(human, [0.5], 0.01) == 0.0
    assert ev.tpr_at_fpr([0.2, 0.1], [0.3, 0.15], 0.0) == 0.5  # no human flagged: above the highest one


def test_condition_report_orients_binoculars_and_counts_near_copies():
    human = [_det(-2.0, 0.1, 1.0), _det(-1.5, 0.2, 0.95), _det(-1.0, 0.3, 0.9)]
    machine = [_det(1.0, 0.9, 0.6), _det(0.5, 0.8, 0.7), _det(-1.2, 0.25, 0.92)]
    originals = [
        "The council voted to expand the bike lanes downtown next spring.",
        "Exercise improves sleep and lowers stress for most people.",
        "The museum opens late on Fridays for working visitors.",
    ]
    texts = [originals[0], "Working out helps you sleep better and feel calmer.", "On Fridays the museum stays open late."]
    r = ev.condition_report("base", human, machine, originals, texts, [1.0, 0.8, 0.6])
    assert r.signal == "probability"
    assert r.auroc == pytest.approx(ev.auroc([0.1, 0.2, 0.3], [0.9, 0.8, 0.25]))
    # Binoculars: lower = machine, so the report negates it; machine texts here score lower, AUROC must be high.
    assert r.auroc_members["binoculars"] == pytest.approx(ev.auroc([-1.0, -0.95, -0.9], [-0.6, -0.7, -0.92]))
    assert r.auroc_members["binoculars"] > 0.5 and r.auroc_members["fast_detectgpt"] > 0.5
    assert r.near_copy_share == pytest.approx(1 / 3)
    assert r.similarity == pytest.approx(((1.0 + 1) / 2 + (0.8 + 1) / 2 + (0.6 + 1) / 2) / 3)
    assert r.perplexity == pytest.approx(30.0) and r.count == 3
    # One withheld probability: the ensemble falls back to the criterion for everyone (comparable scores).
    withheld = [*machine[:2], _det(-1.2, None, 0.92, reliable=False)]
    r2 = ev.condition_report("x", human, withheld, originals, texts, [1.0, 0.8, 0.6])
    assert r2.signal == "criterion" and r2.unreliable_share == pytest.approx(1 / 3)
    with pytest.raises(ValueError):
        ev.condition_report("x", human, machine[:2], originals, texts, [1.0, 0.8, 0.6])


def test_geometric_mean_skips_non_finite_values():
    assert ev.geometric_mean([10.0, 1000.0]) == pytest.approx(100.0)
    assert ev.geometric_mean([10.0, float("nan"), 0.0]) == pytest.approx(10.0)
    assert math.isnan(ev.geometric_mean([]))


def test_inputs_detect_halves_bounds_and_flags(tmp_path: Path):
    data = {"original": [f"Human text number {i}. More." for i in range(6)], "sampled": [f"Machine text {i}." for i in range(6)]}
    (tmp_path / "d.json").write_text(json.dumps(data))
    args = ev.parse_args(["--data", str(tmp_path / "d.json"), "--half", "second", "--limit", "2"])
    human, machine = ev.load_inputs(args)
    assert human == ["Human text number 3. More.", "Human text number 4. More."]
    assert machine == ["Machine text 3.", "Machine text 4."]
    (tmp_path / "h.txt").write_text("only one\n")
    with pytest.raises(SystemExit, match="at least 2"):
        ev.load_inputs(ev.parse_args(["--human", str(tmp_path / "h.txt"), "--machine", str(tmp_path / "h.txt")]))
    (tmp_path / "bad.json").write_text('{"sampled": []}')
    with pytest.raises(SystemExit, match="original"):
        ev.load_inputs(ev.parse_args(["--data", str(tmp_path / "bad.json")]))
    for argv in (["--policy", "original=x"], ["--policy", "no-model"], ["--limit", "0"], ["--max-new-tokens", "5000"]):
        with pytest.raises(SystemExit):
            ev.parse_args(argv)
    with pytest.raises(SystemExit):
        ev.mesh_config(["scorer=h:1"], {})
    assert ev.mesh_config(["detector=h:1"], {}).services["detector"].addresses == ("h:1",)


def test_cached_rewrites_are_reused_only_for_the_same_originals(tmp_path: Path):
    path = tmp_path / "rewrites_base.jsonl"
    assert ev.cached_rewrites(path, ["a", "b"], lambda: ["A", "B"]) == ["A", "B"]
    assert ev.cached_rewrites(path, ["a", "b"], lambda: pytest.fail("made again")) == ["A", "B"]
    assert ev.cached_rewrites(path, ["a", "c"], lambda: ["A2", "C2"]) == ["A2", "C2"]


def test_cached_rewrites_from_other_decoding_settings_are_made_again(tmp_path: Path):
    """A rerun at another temperature (or seed, length, policy) into the same folder once reused the greedy
    rewrites silently; the settings are recorded with each rewrite and must match."""
    path = tmp_path / "rewrites_p.jsonl"
    greedy = {"policy": "m", "temperature": 0.0, "seed": 0, "max_new_tokens": 64}
    assert ev.cached_rewrites(path, ["a"], lambda: ["greedy"], greedy) == ["greedy"]
    assert ev.cached_rewrites(path, ["a"], lambda: pytest.fail("made again"), greedy) == ["greedy"]
    sampled = {**greedy, "temperature": 1.0}
    assert ev.cached_rewrites(path, ["a"], lambda: ["sampled"], sampled) == ["sampled"]
    assert json.loads(path.read_text())["settings"] == sampled


def test_the_prompt_is_the_one_the_grpo_example_trains_with():
    spec = importlib.util.spec_from_file_location(
        "grpo_train_prompt", Path(__file__).resolve().parents[2] / "examples" / "grpo" / "train.py"
    )
    assert spec is not None and spec.loader is not None
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    assert train.PROMPT_TEMPLATE == ev.PROMPT_TEMPLATE


def test_plot_writes_a_png(tmp_path: Path):  # matplotlib comes with the test extra
    r = ev.ConditionReport("base", 0.8, {"binoculars": 0.7}, 0.3, "probability", 0.9, 0.8, 0.1, 30.0, 0.0, 40.0, 10)
    assert ev.plot(
        [r, ev.ConditionReport("trained", 0.7, {"binoculars": 0.6}, 0.2, "probability", 0.9, 0.8, 0.0, 35.0, 0.0, 40.0, 10)],
        tmp_path / "p.png",
    )
    assert (tmp_path / "p.png").stat().st_size > 1000
    assert "AUROC binoculars" in ev.format_reports([r])


def test_plot_labels_do_not_overlap_with_many_conditions():
    """Seven conditions (base and six checkpoints): the names under the similarity bars are wide; they must not
    overlap (they did with a fixed 11-inch figure and level labels)."""
    import matplotlib.pyplot as plt

    names = ["base", *(f"trained{10 * k}" for k in range(1, 7))]
    reports = [
        ev.ConditionReport(n, 0.7, {"binoculars": 0.6}, 0.2, "probability", 0.9, 0.8, 0.3, 40.0, 0.3, 30.0, 48) for n in names
    ]
    fig = ev.figure(reports)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for axes in fig.axes:
        boxes = [t.get_window_extent(renderer) for t in axes.get_xticklabels() if t.get_text()]
        labels = [t.get_text() for t in axes.get_xticklabels()]
        assert all(not x.overlaps(y) for x, y in itertools.pairwise(boxes)), labels
    plt.close(fig)


def _condition(name: str, human: list[float], machine: list[float], signal: str = "criterion") -> ev.ConditionReport:
    scores = {"ensemble": (tuple(human), tuple(machine)), "binoculars": (tuple(human), tuple(machine))}
    return ev.ConditionReport(
        name, ev.auroc(human, machine), {"binoculars": ev.auroc(human, machine)}, 0.0, signal, 0.9, 0.8, 0.0, 30.0, 0.0, 40.0,
        len(machine), scores,
    )  # fmt: skip


def test_auroc_change_is_paired_and_its_interval_says_when_a_drop_is_noise():
    human = [0.1 * k for k in range(40)]
    base = _condition("base", human, [0.1 * k + 2.0 for k in range(40)])  # well separated: AUROC ~0.86
    same = ev.auroc_change(base, _condition("same", human, list(base.scores["ensemble"][1])))
    assert same.drop == 0 and same.low == same.high == 0  # paired: the same texts give no spread at all
    evading = _condition("trained", human, [0.1 * k - 1.0 for k in range(40)])  # rewrites moved into the human range
    change = ev.auroc_change(base, evading, resamples=500)
    assert change.drop == pytest.approx(base.auroc - evading.auroc) and change.drop > 0.2
    assert 0 < change.low < change.drop < change.high
    # rewrites that move some texts up and as many down by as much: no drop, and an interval that spans 0
    jittered = _condition("jittered", human, [0.1 * k + 2.0 + (1.5 if k % 2 else -1.5) for k in range(40)])
    noise = ev.auroc_change(base, jittered, resamples=500)
    assert noise.low < 0 < noise.high
    with pytest.raises(ValueError, match="same signal"):
        ev.auroc_change(base, _condition("p", human, human, signal="probability"))
    # a member's raw scores do not depend on the ensemble's signal
    assert ev.auroc_change(base, _condition("p", human, human, signal="probability"), "binoculars", resamples=50).drop > 0


def test_changes_compare_every_policy_with_the_first_for_the_ensemble_and_each_member():
    human = [0.1 * k for k in range(10)]
    reports = [_condition(n, human, [0.1 * k + s for k in range(10)]) for n, s in (("original", 1), ("base", 2), ("t", 0))]
    found = ev.changes(reports, resamples=50)
    assert [(c.detector, c.base, c.other) for c in found] == [("ensemble", "base", "t"), ("binoculars", "base", "t")]
    assert "ensemble base -> t: drop +" in ev.format_changes(found)
    assert next((c.base, c.other) for c in ev.changes(reports[:2], resamples=50)) == ("original", "base")


def test_a_condition_whose_ensemble_fell_back_to_the_criterion_is_still_compared_member_by_member():
    """Base rewrites with withheld (short) detections have no P(machine) for every text, so their ensemble signal is
    the criterion; a trained policy's longer rewrites have probabilities. The members must still be compared (the
    first version skipped the whole condition and printed no drop at all)."""
    human = [0.1 * k for k in range(10)]
    reports = [
        _condition("original", human, [0.1 * k + 1 for k in range(10)], signal="probability"),
        _condition("base", human, [0.1 * k + 2 for k in range(10)], signal="criterion"),
        _condition("trained", human, [0.1 * k for k in range(10)], signal="probability"),
    ]
    found = ev.changes(reports, resamples=50)
    assert [(c.detector, c.other) for c in found] == [("binoculars", "trained")] and found[0].drop > 0


def test_the_ensemble_is_compared_on_the_texts_judged_under_both_conditions():
    """When the base rewrites have withheld (short) detections, the ensemble's P(machine) is still compared with a
    trained policy's on the texts both had judged; the withheld index is left out of both (the first version
    printed no ensemble change at all)."""
    humans = [_det(0.0, 0.1 * k, 1.0) for k in range(6)]
    base_m = [_det(1.0, p, 0.9) for p in (0.9, 0.8, None, 0.7, 0.95, 0.85)]  # one withheld: too short
    trained_m = [_det(0.0, p, 1.0) for p in (0.2, 0.3, 0.9, 0.1, 0.4, 0.05)]
    originals = [f"original text number {k} about something" for k in range(6)]
    texts = [f"rewrite {k} says the same thing in other words" for k in range(6)]
    base = ev.condition_report("base", humans, base_m, originals, texts, [0.5] * 6)
    trained = ev.condition_report("trained", humans, trained_m, originals, texts, [0.5] * 6)
    assert base.signal == "criterion" and trained.signal == "probability"
    found = ev.changes([base, trained], resamples=200)
    judged = next(c for c in found if c.detector == ev.JUDGED)
    human_p = [0.1 * k for k in range(6)]
    kept = [0, 1, 3, 4, 5]  # index 2 was withheld under base: out of both
    want = ev.auroc(human_p, [base_m[j].probability for j in kept]) - ev.auroc(human_p, [trained_m[j].probability for j in kept])
    assert judged.drop == pytest.approx(want) and judged.drop > 0.5
    assert judged.texts == "5 of 6 machine texts, 6 of 6 human texts"
    assert "on 5 of 6 machine texts" in ev.format_changes(found)
    assert "ensemble" not in [c.detector for c in found]  # the all-texts ensemble signals differ: not compared
    # nothing judged in both: no ensemble line
    none = ev.condition_report("none", humans, [_det(1.0, None, 0.9) for _ in range(6)], originals, texts, [0.5] * 6)
    assert ev.judged_change(none, trained) is None
