"""tinker-cookbook protocol without network: builders pickle without channels, envs speak the cookbook's own types.

Uses the embedded SmolLM2 tokenizer; the rewards over the real mesh are driven in tests/e2e/test_grpo.py.
"""

from __future__ import annotations

import asyncio
import pickle

import pytest
import tinker
from tinker_cookbook.rl.types import Env, EnvGroupBuilder, RLDataset, StepResult

from crucible.clients.mesh import MeshConfig
from crucible.clients.reward import RewardConfig
from crucible.clients.tinker_env import (
    ParaphraseDataset,
    ParaphraseDatasetBuilder,
    ParaphraseEnv,
    ParaphraseGroupBuilder,
    load_tokenizer,
)

ORIGINAL = "The city council voted on Tuesday to expand the bike lane network across the downtown area next spring."


def test_builder_is_the_cookbooks_type_and_pickles_without_live_channels():
    builder = ParaphraseGroupBuilder(
        ORIGINAL,
        group_size=3,
        reward=RewardConfig(detector_signal="criterion"),
        mesh=MeshConfig.from_mapping({"detector": {"address": "127.0.0.1:1"}}),
    )
    assert isinstance(builder, EnvGroupBuilder)
    builder._scorer()  # a live scorer (channels are lazy) must not travel with the builder
    clone = pickle.loads(pickle.dumps(builder))
    assert "_live" not in clone.__dict__ and clone == builder
    assert clone.mesh.services["detector"].addresses == ("127.0.0.1:1",)
    assert clone.logging_tags() == ["crucible", "paraphrase"]
    asyncio.run(builder.cleanup())
    assert "_live" not in builder.__dict__


@pytest.mark.parametrize(
    "kwargs", [{"group_size": 0}, {"original": " "}, {"original": "x" * 9000}, {"template": "no placeholder"}]
)
def test_builder_refuses_bad_settings(kwargs):
    with pytest.raises(ValueError):
        ParaphraseGroupBuilder(**{"original": ORIGINAL, "group_size": 2, **kwargs})


def test_envs_render_the_chat_prompt_and_step_once():
    builder = ParaphraseGroupBuilder(ORIGINAL, group_size=2)
    envs = asyncio.run(builder.make_envs())
    assert len(envs) == 2 and all(isinstance(e, (Env, ParaphraseEnv)) for e in envs)
    observation, stop = asyncio.run(envs[0].initial_observation())
    tokenizer = load_tokenizer("smollm2-135m-instruct")
    assert isinstance(observation, tinker.ModelInput)
    prompt = tokenizer.decode(observation.to_ints())
    assert ORIGINAL in prompt and prompt.rstrip().endswith("assistant")
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in stop
    action = [*tokenizer.encode("The council approved more downtown bike lanes.", add_special_tokens=False), stop[0]]
    result = asyncio.run(envs[0].step(action, extra={"stop_reason": "stop"}))
    assert isinstance(result, StepResult) and result.episode_done and result.reward == 0.0
    assert envs[0].completion == "The council approved more downtown bike lanes."
    assert result.metrics["stop/completed"] == 1.0
    truncated = asyncio.run(envs[1].step(action[:3], extra={"stop_reason": "length"}))
    assert truncated.metrics["stop/max_tokens"] == 1.0


def test_over_long_prompt_is_refused_before_sampling():
    builder = ParaphraseGroupBuilder(ORIGINAL, group_size=2, max_prompt_tokens=10)
    with pytest.raises(ValueError, match="max_prompt_tokens"):
        asyncio.run(builder.make_envs())


def test_dataset_and_chz_builder(tmp_path, monkeypatch):
    data = tmp_path / "originals.txt"
    data.write_text("\n".join(f"Text number {i} to rewrite." for i in range(5)) + "\n\n")
    monkeypatch.setenv("CRUCIBLE_DETECTOR_ADDRESS", "10.0.0.1:50051")
    train, test = asyncio.run(ParaphraseDatasetBuilder(data=str(data), groups_per_batch=2, group_size=4)())
    assert isinstance(train, (RLDataset, ParaphraseDataset)) and test is None
    assert len(train) == 2
    batch = train.get_batch(1)
    assert [b.original for b in batch] == ["Text number 2 to rewrite.", "Text number 3 to rewrite."]
    assert batch[0].group_size == 4 and batch[0].mesh.services["detector"].addresses == ("10.0.0.1:50051",)
    with pytest.raises(IndexError):
        train.get_batch(2)
