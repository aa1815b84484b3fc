"""Memory sizing and placement (sizing.py): each estimate checked against hand-computed values."""

from __future__ import annotations

import pytest

from crucible.runtime.errors import InvalidArgument
from crucible.scheduler import sizing

GIB = 1 << 30


# --- sizing -----------------------------------------------------------------------------------------------------


def test_gpt2_parameter_count_matches_a_direct_sum() -> None:
    shape = sizing.Shape(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50304)
    e = 768
    per_layer = (2 * e) + (e * 3 * e + 3 * e) + (e * e + e) + (2 * e) + (e * 4 * e + 4 * e) + (4 * e * e + e)
    assert shape.parameter_count() == 50304 * e + 1024 * e + 12 * per_layer + 2 * e == 124_475_904


def test_training_estimate_arithmetic() -> None:
    est = sizing.estimate_requirements(
        parameter_count=None,
        shape=sizing.Shape(2, 2, 64, 32, 65),
        training=True,
        batch_size=4,
        block_size=0,
        precision="fp32",
        optimizer="adamw",
    )
    p = est.parameter_count
    assert est.weights_bytes == 4 * p and est.gradients_bytes == 4 * p and est.optimizer_state_bytes == 8 * p
    s, b, h, a = 32, 4, 64, 2
    per_layer = int(s * b * h * (34 + 5 * a * s / h) * 2)  # fp32 activations: twice the 16-bit rule
    assert est.activations_bytes == 2 * per_layer + b * s * 65 * 8
    assert est.total_bytes == est.weights_bytes + est.gradients_bytes + est.optimizer_state_bytes + est.activations_bytes
    assert any(line.startswith("weights:") for line in est.arithmetic)
    assert est.arithmetic[-1].startswith("total:")


def test_inference_estimate_and_precisions() -> None:
    est = sizing.estimate_requirements(
        parameter_count=7_000_000_000, shape=None, training=False, batch_size=1, block_size=2048, precision="int4", optimizer=None
    )
    assert est.weights_bytes == int(7e9 * (0.5 + 2 / 64))
    assert est.gradients_bytes == est.optimizer_state_bytes == 0
    layers, width, _rule = sizing.shape_from_parameters(7_000_000_000)
    assert (layers, width) == (33, 4211)
    assert est.activations_bytes == sizing.inference_activation_bytes(layers, width, 32000, 2048, 2)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"precision": "int8", "training": True}, "precision"),
        ({"precision": "mixed_bf16", "training": False}, "precision"),
        ({"optimizer": None}, "optimizer"),
        ({"batch_size": 0}, "batch_size"),
        ({"block_size": 0}, "block_size"),
        ({"parameter_count": 0}, "parameter_count"),
    ],
)
def test_estimate_rejects_bad_input(kwargs: dict, field: str) -> None:
    args = dict(parameter_count=1000, shape=None, training=True, batch_size=1, block_size=8, precision="fp32", optimizer="adamw")
    args.update(kwargs)
    with pytest.raises(InvalidArgument) as err:
        sizing.estimate_requirements(**args)
    assert err.value.field_violations[0][0] == field


def test_head_count_must_divide_width() -> None:
    with pytest.raises(InvalidArgument) as err:
        sizing.estimate_requirements(
            parameter_count=None,
            shape=sizing.Shape(2, 3, 64, 32, 65),
            training=False,
            batch_size=1,
            block_size=0,
            precision="fp32",
            optimizer=None,
        )
    assert err.value.field_violations[0][0] == "transformer.n_head"


SEED_MODELS = [
    sizing.ModelSpec("proposer", "int4", 70_000_000_000),
    sizing.ModelSpec("target", "int8", 8_000_000_000),
    sizing.ModelSpec("deberta", "fp16", 435_000_000),
]


def test_seed_case_does_not_fit_on_one_80gb_gpu() -> None:
    plan = sizing.plan_placement(
        SEED_MODELS, [sizing.DeviceSpec("cuda:0", "gpu", 80 * GIB)], parallel_requests=3, sequence_length=4096
    )
    assert not plan.fits
    gpu = plan.devices[0]
    assert gpu.used_bytes > gpu.usable_bytes == int(80 * GIB * 0.9)
    assert any("move target to cpu" in line for line in plan.explanation)


def test_seed_case_fits_with_the_target_on_cpu() -> None:
    models = [SEED_MODELS[0], sizing.ModelSpec("target", "int8", 8_000_000_000, pinned_device="cpu"), SEED_MODELS[2]]
    devices = [sizing.DeviceSpec("cuda:0", "gpu", 80 * GIB), sizing.DeviceSpec("cpu", "cpu", 128 * GIB)]
    plan = sizing.plan_placement(models, devices, parallel_requests=3, sequence_length=4096)
    assert plan.fits
    where = {a.model_name: a.device_names for a in plan.assignments}
    assert where == {"proposer": ["cuda:0"], "target": ["cpu"], "deberta": ["cuda:0"]}
    # Without the pin the planner finds the same placement by itself.
    free = sizing.plan_placement(SEED_MODELS, devices, parallel_requests=3, sequence_length=4096)
    assert free.fits and {a.model_name: a.device_names for a in free.assignments} == where


def test_sharding_and_data_parallel() -> None:
    big = sizing.ModelSpec("big", "fp16", 30_000_000_000, activation_bytes_per_request=GIB)
    gpus = [sizing.DeviceSpec(f"cuda:{i}", "gpu", 40 * GIB) for i in range(2)]
    plan = sizing.plan_placement([big], gpus)
    assert plan.fits and plan.assignments[0].strategy == "sharded"
    assert sum(d.used_bytes for d in plan.devices) == plan.assignments[0].total_bytes
    small = sizing.ModelSpec("small", "fp16", 1_000_000_000, activation_bytes_per_request=GIB)
    plan = sizing.plan_placement([small], gpus, parallel_requests=4)
    a = plan.assignments[0]
    assert plan.fits and a.strategy == "data_parallel" and a.device_names == ["cuda:0", "cuda:1"]
    assert a.activations_bytes == 2 * GIB  # 4 requests split over 2 copies


def test_placement_input_errors() -> None:
    gpu = [sizing.DeviceSpec("cuda:0", "gpu", GIB)]
    with pytest.raises(InvalidArgument) as err:
        sizing.plan_placement([sizing.ModelSpec("m", "fp16", 10, pinned_device="tpu")], gpu)
    assert err.value.field_violations[0][0] == "models[0].pinned_device"
    with pytest.raises(InvalidArgument) as err:
        sizing.plan_placement([sizing.ModelSpec("m", "fp16", 10), sizing.ModelSpec("m", "fp16", 10)], gpu)
    assert err.value.field_violations[0][0] == "models[1].name"
    with pytest.raises(InvalidArgument) as err:
        sizing.plan_placement([sizing.ModelSpec("m", "fp16", 10)], gpu, headroom_fraction=1.0)
    assert err.value.field_violations[0][0] == "headroom_fraction"
