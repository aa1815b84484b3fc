"""Memory sizing of training and inference workloads, and placement of several models on GPUs and the CPU.

Pure arithmetic with every step written out as a line of text; the servicer turns requests into these calls.
"""

from __future__ import annotations

import dataclasses
import math

from crucible.runtime.errors import InvalidArgument

GIB = 1 << 30
MIB = 1 << 20

# Bytes per parameter of the stored weights. INT4 counts one 16-bit scale per group of 64 weights (NF4/GPTQ/AWQ).
INT4_GROUP = 64
WEIGHT_BYTES = {
    "fp32": 4.0,
    "fp16": 2.0,
    "bf16": 2.0,
    "mixed_fp16": 4.0,
    "mixed_bf16": 4.0,
    "int8": 1.0,
    "int4": 0.5 + 2.0 / INT4_GROUP,
}
# Bytes per activation value.
ACTIVATION_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "mixed_fp16": 2, "mixed_bf16": 2, "int8": 2, "int4": 2}
# Bytes per parameter of the gradients (training): the dtype of the weights being updated.
GRADIENT_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "mixed_fp16": 4, "mixed_bf16": 4}
OPTIMIZER_BYTES = {"adamw": 8, "sgd": 0, "sgd_momentum": 4, "adamw_8bit": 2}
OPTIMIZER_TEXT = {
    "adamw": "AdamW: two fp32 moments",
    "sgd": "plain SGD: no state",
    "sgd_momentum": "SGD momentum: one fp32 buffer",
    "adamw_8bit": "8-bit AdamW: two 8-bit moments",
}
TRAINING_PRECISIONS = ("fp32", "fp16", "bf16", "mixed_fp16", "mixed_bf16")
INFERENCE_PRECISIONS = ("fp32", "fp16", "bf16", "int8", "int4")
# Vocabulary assumed when only a parameter count is known (Llama-2 / Mistral size).
ASSUMED_VOCAB = 32000
DEFAULT_HEADROOM = 0.1


def fmt_bytes(n: float) -> str:
    """'497,903,616 B (474.8 MiB)' style: exact bytes and a readable unit."""
    n = round(n)
    if n >= GIB:
        return f"{n:,} B ({n / GIB:.2f} GiB)"
    return f"{n:,} B ({n / MIB:.1f} MiB)"


@dataclasses.dataclass(frozen=True)
class Shape:
    """A GPT-style decoder shape (nanoGPT GPTConfig)."""

    n_layer: int
    n_head: int
    n_embd: int
    block_size: int
    vocab_size: int

    def validate(self, field: str) -> None:
        """InvalidArgument naming the first bad dimension."""
        for attr in ("n_layer", "n_head", "n_embd", "block_size", "vocab_size"):
            if getattr(self, attr) < 1:
                raise InvalidArgument.field(f"{field}.{attr}", "must be at least 1")
        if self.n_embd % self.n_head:
            raise InvalidArgument.field(f"{field}.n_head", f"must divide n_embd ({self.n_embd})")

    def parameter_count(self) -> int:
        """Parameters of nanoGPT's GPT with biases and the output head tied to the token embedding."""
        e, layer = self.n_embd, 12 * self.n_embd**2 + 13 * self.n_embd
        return self.vocab_size * e + self.block_size * e + self.n_layer * layer + 2 * e

    def parameter_arithmetic(self) -> str:
        """How parameter_count() is obtained."""
        e = self.n_embd
        return (
            f"parameters: token embedding {self.vocab_size}x{e} + position embedding {self.block_size}x{e} + "
            f"{self.n_layer} layers x (12x{e}^2 + 13x{e}) + final layer norm 2x{e} (output head tied) = "
            f"{self.parameter_count():,}"
        )


def shape_from_parameters(parameters: int, vocab: int = ASSUMED_VOCAB) -> tuple[int, int, str]:
    """(n_layer, n_embd, rule text) of a GPT-style model with about `parameters` parameters.

    Rule: parameters ~= 12 x n_layer x n_embd^2 with n_layer = n_embd / 128 (the depth-to-width ratio of GPT-3 and
    Llama models), so n_embd = (parameters x 128 / 12)^(1/3); gives 4,211 x 33 for 7B (Llama-2-7B: 4,096 x 32).
    """
    width = max(64, round((parameters * 128 / 12) ** (1 / 3)))
    layers = max(1, round(width / 128))
    rule = (
        f"shape rule (only the parameter count is known): n_embd = (params x 128 / 12)^(1/3) = {width:,}, "
        f"n_layer = n_embd / 128 = {layers}, vocabulary {vocab:,} assumed"
    )
    return layers, width, rule


@dataclasses.dataclass(frozen=True)
class Estimate:
    """Memory of one workload on one device, in bytes, with the arithmetic."""

    parameter_count: int
    weights_bytes: int
    gradients_bytes: int
    optimizer_state_bytes: int
    activations_bytes: int
    arithmetic: tuple[str, ...]

    @property
    def total_bytes(self) -> int:
        """Sum of the four parts."""
        return self.weights_bytes + self.gradients_bytes + self.optimizer_state_bytes + self.activations_bytes


def estimate_requirements(
    *,
    parameter_count: int | None,
    shape: Shape | None,
    training: bool,
    batch_size: int,
    block_size: int,
    precision: str,
    optimizer: str | None,
) -> Estimate:
    """Memory for weights, gradients, optimizer state and activations of one training or inference workload.

    Training activations follow Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer
    Models"): per layer s x b x h x (34 + 5 x a x s / h) bytes with 16-bit activations (doubled for fp32), plus the
    fp32 logits and their gradient. Inference activations are the key/value cache plus one layer's working set.
    """
    if (parameter_count is None) == (shape is None):
        raise InvalidArgument.field("model", "exactly one of parameter_count or transformer is required")
    if shape is not None:
        shape.validate("transformer")
    elif parameter_count is not None and parameter_count < 1:
        raise InvalidArgument.field("parameter_count", "must be at least 1")
    if batch_size < 1:
        raise InvalidArgument.field("batch_size", "must be at least 1")
    if precision not in WEIGHT_BYTES:
        raise InvalidArgument.field("precision", "must be set")
    allowed = TRAINING_PRECISIONS if training else INFERENCE_PRECISIONS
    if precision not in allowed:
        raise InvalidArgument.field("precision", f"{precision} is not allowed for {'training' if training else 'inference'}")
    if training and optimizer not in OPTIMIZER_BYTES:
        raise InvalidArgument.field("optimizer", "is required for training")
    seq = block_size or (shape.block_size if shape else 0)
    if seq < 1:
        raise InvalidArgument.field("block_size", "is required (non-zero) with parameter_count")

    lines: list[str] = []
    if shape is not None:
        params = shape.parameter_count()
        lines.append(shape.parameter_arithmetic())
        layers, width, heads, vocab = shape.n_layer, shape.n_embd, shape.n_head, shape.vocab_size
        if seq > shape.block_size:
            lines.append(f"note: block_size {seq} exceeds the model's context {shape.block_size}")
    else:
        assert parameter_count is not None
        params = parameter_count
        layers, width, rule = shape_from_parameters(params)
        heads, vocab = max(1, width // 64), ASSUMED_VOCAB
        lines.append(f"parameters: {params:,} (given)")
        lines.append(rule + f", {heads} heads of 64")

    wb = WEIGHT_BYTES[precision]
    weights = math.ceil(params * wb)
    lines.append(f"weights: {params:,} params x {wb:g} B ({precision}) = {fmt_bytes(weights)}")
    act_b = ACTIVATION_BYTES[precision]
    b, s, h, a, L, V = batch_size, seq, width, heads, layers, vocab
    if training:
        gb = GRADIENT_BYTES[precision]
        grads = params * gb
        lines.append(f"gradients: {params:,} params x {gb} B = {fmt_bytes(grads)}")
        assert optimizer is not None
        ob = OPTIMIZER_BYTES[optimizer]
        opt = params * ob
        lines.append(f"optimizer state: {params:,} params x {ob} B ({OPTIMIZER_TEXT[optimizer]}) = {fmt_bytes(opt)}")
        per_layer16 = s * b * h * (34 + 5 * a * s / h)
        scale = act_b / 2
        per_layer = int(per_layer16 * scale)
        logits = b * s * V * 4 * 2
        acts = L * per_layer + logits
        lines.append(
            f"activations per layer: s x b x h x (34 + 5 x a x s / h) = {s} x {b} x {h} x (34 + 5 x {a} x {s} / {h})"
            f"{' x 2 (fp32)' if act_b == 4 else ''} = {fmt_bytes(per_layer)}"
        )
        lines.append(f"logits and their gradient: b x s x vocab x 4 B x 2 = {b} x {s} x {V} x 8 = {fmt_bytes(logits)}")
        lines.append(f"activations: {L} layers x {per_layer:,} B + {logits:,} B = {fmt_bytes(acts)} (no recomputation)")
    else:
        grads = opt = 0
        lines.append("gradients and optimizer state: none for inference")
        acts = inference_activation_bytes(L, h, V, s, act_b) * b
        lines.extend(inference_activation_lines(L, h, V, s, act_b, b))
    est = Estimate(params, weights, grads, opt, int(acts), tuple(lines))
    lines_total = f"total: {fmt_bytes(est.total_bytes)} (CUDA context and allocator fragmentation not included)"
    return dataclasses.replace(est, arithmetic=(*lines, lines_total))


def inference_activation_bytes(layers: int, width: int, vocab: int, seq: int, act_bytes: int) -> int:
    """One request's memory in inference: key/value cache, one MLP intermediate, fp32 logits (fused attention assumed)."""
    kv = 2 * layers * seq * width * act_bytes
    mlp = seq * 4 * width * act_bytes
    logits = seq * vocab * 4
    return kv + mlp + logits


def inference_activation_lines(layers: int, width: int, vocab: int, seq: int, act_bytes: int, requests: int) -> list[str]:
    """The arithmetic of inference_activation_bytes for `requests` concurrent sequences."""
    kv = 2 * layers * seq * width * act_bytes
    mlp = seq * 4 * width * act_bytes
    logits = seq * vocab * 4
    per = kv + mlp + logits
    return [
        f"key/value cache per sequence: 2 x {layers} layers x {seq} tokens x {width} x {act_bytes} B = {fmt_bytes(kv)}",
        f"working set per sequence: MLP {seq} x 4 x {width} x {act_bytes} B = {fmt_bytes(mlp)} + fp32 logits "
        f"{seq} x {vocab} x 4 B = {fmt_bytes(logits)} (fused attention: scores not materialised)",
        f"activations: {requests} sequence(s) x {fmt_bytes(per)} = {fmt_bytes(per * requests)}",
    ]


# --- placement -------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A model to place: its size, weight precision, optional pin and activation memory per request."""

    name: str
    precision: str
    parameter_count: int | None = None
    shape: Shape | None = None
    pinned_device: str = ""
    activation_bytes_per_request: int | None = None


@dataclasses.dataclass(frozen=True)
class DeviceSpec:
    """A device: name, 'gpu' or 'cpu', memory in bytes."""

    name: str
    kind: str
    memory_bytes: int


@dataclasses.dataclass
class Assignment:
    """Where one model goes."""

    model_name: str
    strategy: str  # "single_device" | "data_parallel" | "sharded"
    device_names: list[str]
    weights_bytes: int
    activations_bytes: int

    @property
    def total_bytes(self) -> int:
        """Weights plus activations."""
        return self.weights_bytes + self.activations_bytes


@dataclasses.dataclass
class DeviceUse:
    """How full one device is."""

    name: str
    memory_bytes: int
    usable_bytes: int
    used_bytes: int = 0
    model_names: list[str] = dataclasses.field(default_factory=list)

    @property
    def fits(self) -> bool:
        """Used memory within the usable part."""
        return self.used_bytes <= self.usable_bytes

    @property
    def free_bytes(self) -> int:
        """Usable memory left (negative when over)."""
        return self.usable_bytes - self.used_bytes


@dataclasses.dataclass
class Plan:
    """A placement plan and whether it fits."""

    fits: bool
    assignments: list[Assignment]
    devices: list[DeviceUse]
    explanation: list[str]


@dataclasses.dataclass(frozen=True)
class _Sized:
    model: ModelSpec
    weights: int
    act_per_request: int
    text: str


def _size_model(m: ModelSpec, index: int, seq: int) -> _Sized:
    field = f"models[{index}]"
    if m.precision not in INFERENCE_PRECISIONS:
        raise InvalidArgument.field(f"{field}.precision", "must be FP32, FP16, BF16, INT8 or INT4")
    if (m.parameter_count is None) == (m.shape is None):
        raise InvalidArgument.field(f"{field}.size", "exactly one of parameter_count or transformer is required")
    if m.shape is not None:
        m.shape.validate(f"{field}.transformer")
        params, layers, width, vocab = m.shape.parameter_count(), m.shape.n_layer, m.shape.n_embd, m.shape.vocab_size
        rule = f"shape {layers} layers x {width}, vocabulary {vocab:,}"
    else:
        assert m.parameter_count is not None
        if m.parameter_count < 1:
            raise InvalidArgument.field(f"{field}.parameter_count", "must be at least 1")
        params = m.parameter_count
        layers, width, rule = shape_from_parameters(params)
        vocab = ASSUMED_VOCAB
    weights = math.ceil(params * WEIGHT_BYTES[m.precision])
    if m.activation_bytes_per_request is not None:
        act = m.activation_bytes_per_request
        act_text = f"activations {fmt_bytes(act)} per request (given)"
    else:
        act = inference_activation_bytes(layers, width, vocab, seq, ACTIVATION_BYTES[m.precision])
        act_text = (
            f"activations {fmt_bytes(act)} per request (key/value cache 2 x {layers} x {seq} x {width} x "
            f"{ACTIVATION_BYTES[m.precision]} B + MLP working set + fp32 logits; {rule})"
        )
    text = (
        f"{m.name}: {params:,} params x {WEIGHT_BYTES[m.precision]:g} B ({m.precision}) = weights {fmt_bytes(weights)}; "
        + act_text
    )
    return _Sized(m, weights, act, text)


def plan_placement(
    models: list[ModelSpec],
    devices: list[DeviceSpec],
    *,
    headroom_fraction: float | None = None,
    parallel_requests: int = 0,
    sequence_length: int = 0,
) -> Plan:
    """Put each model on a GPU (largest first, most free GPU first), else shard it over GPUs, else the CPU.

    Pinned models go where they are pinned. GPUs left empty get data-parallel copies of the models that fit on them.
    A plan that does not fit names the overflowing device, by how much, and which model's move to the CPU would fix it.
    """
    if not models:
        raise InvalidArgument.field("models", "at least one model is required")
    if not devices:
        raise InvalidArgument.field("devices", "at least one device is required")
    headroom = DEFAULT_HEADROOM if headroom_fraction is None else headroom_fraction
    if not 0 <= headroom < 1 or math.isnan(headroom):
        raise InvalidArgument.field("headroom_fraction", "must be in [0, 1)")
    requests = parallel_requests or 1
    seq = sequence_length or 2048
    seen: set[str] = set()
    for i, d in enumerate(devices):
        if not d.name:
            raise InvalidArgument.field(f"devices[{i}].name", "must not be empty")
        if d.name in seen:
            raise InvalidArgument.field(f"devices[{i}].name", f"duplicate device name {d.name!r}")
        seen.add(d.name)
        if d.kind not in ("gpu", "cpu"):
            raise InvalidArgument.field(f"devices[{i}].kind", "must be DEVICE_KIND_GPU or DEVICE_KIND_CPU")
        if d.memory_bytes < 1:
            raise InvalidArgument.field(f"devices[{i}].memory_bytes", "must be at least 1")
    names: set[str] = set()
    for i, m in enumerate(models):
        if not m.name:
            raise InvalidArgument.field(f"models[{i}].name", "must not be empty")
        if m.name in names:
            raise InvalidArgument.field(f"models[{i}].name", f"duplicate model name {m.name!r}")
        names.add(m.name)
        if m.pinned_device and m.pinned_device not in seen:
            raise InvalidArgument.field(f"models[{i}].pinned_device", f"unknown device {m.pinned_device!r}")
    sized = [_size_model(m, i, seq) for i, m in enumerate(models)]

    use = {d.name: DeviceUse(d.name, d.memory_bytes, int(d.memory_bytes * (1 - headroom))) for d in devices}
    kinds = {d.name: d.kind for d in devices}
    gpus = [d.name for d in devices if d.kind == "gpu"]
    cpus = [d.name for d in devices if d.kind == "cpu"]
    explanation = [s.text for s in sized]
    explanation.append(
        f"{requests} parallel request(s) of {seq} tokens per model; headroom {headroom:.0%} of each device kept free"
    )
    result: dict[str, Assignment] = {}

    def put(s: _Sized, device: str, why: str) -> None:
        a = Assignment(s.model.name, "single_device", [device], s.weights, s.act_per_request * requests)
        result[s.model.name] = a
        use[device].used_bytes += a.total_bytes
        use[device].model_names.append(s.model.name)
        explanation.append(f"{s.model.name} -> {device} ({fmt_bytes(a.total_bytes)}): {why}")

    for s in sized:
        if s.model.pinned_device:
            put(s, s.model.pinned_device, "pinned")
    for s in sorted((s for s in sized if not s.model.pinned_device), key=lambda s: -(s.weights + s.act_per_request)):
        need = s.weights + s.act_per_request * requests
        gpu_fit = [g for g in gpus if use[g].free_bytes >= need]
        if gpu_fit:
            best = max(gpu_fit, key=lambda g: use[g].free_bytes)
            put(s, best, "fits on the GPU with the most free memory")
            continue
        free_gpus = sorted((g for g in gpus if use[g].free_bytes > 0), key=lambda g: -use[g].free_bytes)
        if len(free_gpus) > 1 and sum(use[g].free_bytes for g in free_gpus) >= need:
            chosen, total = [], 0
            for g in free_gpus:
                chosen.append(g)
                total += use[g].free_bytes
                if total >= need:
                    break
            a = Assignment(s.model.name, "sharded", chosen, s.weights, s.act_per_request * requests)
            result[s.model.name] = a
            remaining = need
            for g in chosen:  # fill each GPU up to its free memory, the last one takes the rest
                share = min(use[g].free_bytes, remaining) if g != chosen[-1] else remaining
                use[g].used_bytes += share
                use[g].model_names.append(s.model.name)
                remaining -= share
            explanation.append(f"{s.model.name} -> sharded over {', '.join(chosen)}: fits on no single GPU")
            continue
        cpu_fit = [c for c in cpus if use[c].free_bytes >= need]
        if cpu_fit:
            put(s, max(cpu_fit, key=lambda c: use[c].free_bytes), "fits on no GPU; the CPU has room")
            continue
        fallback = max(gpus or cpus, key=lambda d: use[d].free_bytes)
        put(s, fallback, "fits nowhere; placed on the device with the most free memory")

    # Data parallel: GPUs nobody uses get full copies of single-device GPU models that fit on them.
    empty = [g for g in gpus if not use[g].model_names]
    for a in sorted(result.values(), key=lambda a: -a.total_bytes):
        if not empty or a.strategy != "single_device" or kinds[a.device_names[0]] != "gpu":
            continue
        s = next(x for x in sized if x.model.name == a.model_name)
        if s.model.pinned_device:
            continue
        copies = [g for g in empty if use[g].usable_bytes >= s.weights + s.act_per_request]
        if not copies:
            continue
        devices_for = [a.device_names[0], *copies]
        per_copy_requests = math.ceil(requests / len(devices_for))
        first = a.device_names[0]
        use[first].used_bytes -= a.total_bytes
        a.strategy, a.device_names = "data_parallel", devices_for
        a.activations_bytes = s.act_per_request * per_copy_requests
        for g in devices_for:
            use[g].used_bytes += s.weights + a.activations_bytes
            if g != first:
                use[g].model_names.append(a.model_name)
        empty = [g for g in empty if g not in copies]
        explanation.append(
            f"{a.model_name} -> data parallel over {', '.join(devices_for)}: idle GPUs, {per_copy_requests} request(s) per copy"
        )

    fits = all(u.fits for u in use.values())
    for u in use.values():
        line = (
            f"{u.name}: {fmt_bytes(u.used_bytes)} used of {fmt_bytes(u.usable_bytes)} usable ({fmt_bytes(u.memory_bytes)} total)"
        )
        if u.fits:
            explanation.append(line + ": fits")
            continue
        over = u.used_bytes - u.usable_bytes
        explanation.append(line + f": over by {fmt_bytes(over)}")
        if kinds[u.name] == "gpu":
            movable = sorted(
                (result[n] for n in u.model_names if result[n].strategy == "single_device" and result[n].total_bytes >= over),
                key=lambda a: a.total_bytes,
            )
            if movable:
                target = cpus[0] if cpus else "cpu"
                explanation.append(
                    f"to fit: move {movable[0].model_name} to {target} (frees {fmt_bytes(movable[0].total_bytes)} on {u.name})"
                )
            else:
                explanation.append(f"to fit: a larger GPU, another GPU to shard over, or lower precision on {u.name}")
    order = {m.name: i for i, m in enumerate(models)}
    assignments = sorted(result.values(), key=lambda a: order[a.model_name])
    return Plan(fits, assignments, [use[d.name] for d in devices], explanation)
