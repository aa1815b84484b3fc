"""tinker-cookbook's RL environment protocol for paraphrase training, rewarded by the mesh's CompositeReward.

`ParaphraseGroupBuilder` (an `EnvGroupBuilder`) makes one single-turn `ParaphraseEnv` per group member and scores the
whole group in `compute_group_rewards` with one concurrent batch of mesh calls; builders pickle, channels open lazily.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import chz
import tinker
from tinker_cookbook.completers import StopCondition
from tinker_cookbook.rl.types import (
    Action,
    ActionExtra,
    Env,
    EnvGroupBuilder,
    Metrics,
    Observation,
    RLDataset,
    RLDatasetBuilder,
    StepResult,
    StopReason,
    Trajectory,
)

from crucible.clients.mesh import Mesh, MeshConfig
from crucible.clients.modelpaths import resolve_model_path
from crucible.clients.reward import CompositeReward, RewardConfig

logger = logging.getLogger(__name__)

PROMPT_TEMPLATE = "Paraphrase the following text. Keep its meaning; answer with the rewrite only.\n\n{text}"
#: Bounds checked before tokenising: characters of one original, and tokens of the rendered prompt.
MAX_ORIGINAL_CHARS = 8000
DEFAULT_MAX_PROMPT_TOKENS = 2048


@functools.lru_cache(maxsize=4)
def load_tokenizer(model: str) -> Any:
    """The policy's tokenizer, from a crucible packaged alias, a local folder or the local HF cache (never the network).

    Cached per process: builders carry only the model name, so they pickle small. A packaged alias is resolved by the
    servers' model registry when they are installed (crucible.clients.modelpaths; the SDK never imports the servers);
    with the client alone, give a local folder or a hub id in the local cache.
    """
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model_path(model), local_files_only=True)


def render_prompt(tokenizer: Any, original: str, template: str = PROMPT_TEMPLATE) -> list[int]:
    """Token ids of the chat-formatted paraphrase request, ending where the assistant's turn begins."""
    messages = [{"role": "user", "content": template.format(text=original)}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if hasattr(ids, "keys"):  # transformers 5 returns a BatchEncoding
        ids = ids["input_ids"]
    return [int(i) for i in ids]


def stop_tokens(tokenizer: Any) -> list[int]:
    """Where a completion ends: the end-of-turn / end-of-sequence token(s)."""
    ids = {tokenizer.eos_token_id}
    for token in ("<|im_end|>", "<|eot_id|>", "<|end|>"):
        tid = tokenizer.convert_tokens_to_ids(token)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id:
            ids.add(tid)
    return sorted(i for i in ids if i is not None)


class ParaphraseEnv(Env):
    """One rewrite of one original: a single step whose reward comes from the group (see the builder)."""

    def __init__(self, original: str, prompt: list[int], stop: list[int], tokenizer: Any) -> None:
        self.original = original
        self.prompt = prompt
        self.stop = stop
        self.tokenizer = tokenizer
        self.completion: str | None = None

    async def initial_observation(self) -> tuple[Observation, StopCondition]:
        return tinker.ModelInput.from_ints(self.prompt), list(self.stop)

    async def step(self, action: Action, *, extra: ActionExtra | None = None) -> StepResult:
        tokens = [t for t in action if t not in self.stop]
        self.completion = self.tokenizer.decode(tokens, skip_special_tokens=True).strip()
        truncated = bool(extra and extra.get("stop_reason") == "length")
        reason = StopReason.MAX_TOKENS if truncated else StopReason.COMPLETED
        return StepResult(
            reward=0.0,  # the composite reward is computed once per group, in compute_group_rewards
            episode_done=True,
            next_observation=tinker.ModelInput.empty(),
            next_stop_condition=list(self.stop),
            metrics={f"stop/{reason.value}": 1.0, "completion_tokens": float(len(tokens))},
            logs={"completion": self.completion[:500]},
        )


@dataclasses.dataclass(frozen=True)
class ParaphraseGroupBuilder(EnvGroupBuilder):
    """A GRPO group: `group_size` rewrites of `original`, rewarded together over the mesh.

    Holds only settings (strings, numbers, frozen configs), so it pickles for distributed rollouts; the tokenizer is
    loaded and the mesh channels are opened inside the worker, on first use, and closed in `cleanup()`.
    """

    original: str
    group_size: int
    model: str = "smollm2-135m-instruct"
    reward: RewardConfig = dataclasses.field(default_factory=RewardConfig)
    mesh: MeshConfig | None = None
    template: str = PROMPT_TEMPLATE
    max_prompt_tokens: int = DEFAULT_MAX_PROMPT_TOKENS

    def __post_init__(self) -> None:
        if self.group_size < 1:
            raise ValueError("group_size must be >= 1")
        if not self.original.strip():
            raise ValueError("original is empty")
        if len(self.original) > MAX_ORIGINAL_CHARS:
            raise ValueError(f"original has {len(self.original)} characters, at most {MAX_ORIGINAL_CHARS}")
        if "{text}" not in self.template:
            raise ValueError("template needs a {text} placeholder")

    def __getstate__(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # never the live scorer

    def __setstate__(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            object.__setattr__(self, key, value)

    def _scorer(self) -> CompositeReward:
        scorer = self.__dict__.get("_live")
        if scorer is None:
            scorer = CompositeReward(Mesh(self.mesh), self.reward)
            object.__setattr__(self, "_live", scorer)
        return scorer

    async def make_envs(self) -> Sequence[Env]:
        tokenizer = await asyncio.to_thread(load_tokenizer, self.model)
        prompt = await asyncio.to_thread(render_prompt, tokenizer, self.original, self.template)
        if len(prompt) > self.max_prompt_tokens:
            raise ValueError(f"prompt has {len(prompt)} tokens, over max_prompt_tokens {self.max_prompt_tokens}")
        stop = stop_tokens(tokenizer)
        return [ParaphraseEnv(self.original, prompt, stop, tokenizer) for _ in range(self.group_size)]

    async def compute_group_rewards(
        self, trajectory_group: list[Trajectory], env_group: Sequence[Env]
    ) -> list[tuple[float, Metrics]]:
        """Scores every rewrite of the group in one concurrent batch; metrics carry each weighted component."""
        texts = []
        for trajectory, env in zip(trajectory_group, env_group, strict=True):
            if not isinstance(env, ParaphraseEnv):
                raise TypeError(f"expected ParaphraseEnv, got {type(env).__name__}")
            if env.completion is None:  # the rollout ended before a step (e.g. an overflowed prompt)
                tokens = trajectory.transitions[-1].ac.tokens if trajectory.transitions else []
                env.completion = env.tokenizer.decode(tokens, skip_special_tokens=True).strip()
            texts.append(env.completion)
        rewards = await self._scorer().score([self.original] * len(texts), texts)
        out: list[tuple[float, Metrics]] = []
        for r in rewards:
            metrics: Metrics = {f"reward/{k}": v for k, v in r.components(self.reward).items()}
            metrics.update({"reward/total": r.total, "similarity": r.similarity, "evasion": r.detector})
            if r.perplexity is not None and math.isfinite(r.perplexity):
                metrics["perplexity"] = r.perplexity
            for flag in r.flags:
                metrics[f"flag/{flag}"] = 1.0
            out.append((r.total, metrics))
        return out

    async def cleanup(self) -> None:
        scorer = self.__dict__.pop("_live", None)
        if scorer is not None:
            try:
                await scorer.mesh.close()
            except Exception:  # cleanup must not raise (the cookbook does not catch it)
                logger.warning("closing the mesh channels failed", exc_info=True)

    def logging_tags(self) -> list[str]:
        return ["crucible", "paraphrase"]


class ParaphraseDataset(RLDataset):
    """Batches of `groups_per_batch` builders over a list of originals (in order; one pass)."""

    def __init__(self, originals: Sequence[str], groups_per_batch: int, group_size: int, **builder: Any) -> None:
        if groups_per_batch < 1:
            raise ValueError("groups_per_batch must be >= 1")
        self.originals = list(originals)
        self.groups_per_batch = groups_per_batch
        self.group_size = group_size
        self.builder = builder

    def get_batch(self, index: int) -> Sequence[EnvGroupBuilder]:
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} of {len(self)}")
        start = index * self.groups_per_batch
        return [
            ParaphraseGroupBuilder(original=o, group_size=self.group_size, **self.builder)
            for o in self.originals[start : start + self.groups_per_batch]
        ]

    def __len__(self) -> int:
        return len(self.originals) // self.groups_per_batch


@chz.chz
class ParaphraseDatasetBuilder(RLDatasetBuilder):
    """The cookbook's dataset entry point: originals from a text file (one per line), mesh from CRUCIBLE_*_ADDRESS."""

    data: str
    model: str = "smollm2-135m-instruct"
    groups_per_batch: int = 8
    group_size: int = 8
    detector_signal: str = "criterion"
    max_prompt_tokens: int = DEFAULT_MAX_PROMPT_TOKENS

    async def __call__(self) -> tuple[RLDataset, RLDataset | None]:
        path = Path(self.data)
        if path.stat().st_size > 256 * 1024 * 1024:
            raise ValueError(f"{path}: over 256 MiB")
        text = await asyncio.to_thread(path.read_text, encoding="utf-8")
        originals = [line.strip() for line in text.splitlines() if line.strip()]
        dataset = ParaphraseDataset(
            originals,
            self.groups_per_batch,
            self.group_size,
            model=self.model,
            reward=RewardConfig(detector_signal=self.detector_signal),
            mesh=MeshConfig.from_env(),
            max_prompt_tokens=self.max_prompt_tokens,
        )
        return dataset, None
