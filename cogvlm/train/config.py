"""Frozen configurations of a fine-tuning run, and their translation to and from DeepSpeed's JSON."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Literal

from cogvlm.errors import ConfigError
from cogvlm.image_processors.loading import DEFAULT_MAX_PIXELS
from cogvlm.mixins.lora import LoraConfig
from cogvlm.nn.quantized import QuantConfig
from cogvlm.text_processors.prompts import check_version

Precision = Literal["fp32", "bf16", "fp16"]
DecayStyle = Literal["cosine", "linear", "constant"]
ShuffleScope = Literal["all", "within_rows"]
SHUFFLE_SCOPES = ("all", "within_rows")
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")
DECAY_STYLES: tuple[str, ...] = ("cosine", "linear", "constant")


def _require(condition: bool, owner: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{owner}: {message}")


@dataclass(frozen=True)
class DataConfig:
    """Where the samples are and how they become token sequences.

    A path is a folder of images whose file name (up to the first dot) is the answer to `prompt`
    (the reference captcha layout), or a `.jsonl` file of {image, question, answer, history} records.

    Every image must lie inside its data folder (the captcha folder, or the JSONL file's folder), symbolic
    links resolved, unless `allow_outside_data`; each is decoded once before training starts and must
    hold at most `max_image_pixels` pixels.
    """

    train_path: str
    valid_path: str | None = None
    test_path: str | None = None  # scored once after training (SAT's --test-data)
    prompt: str = "CAPTCHA:"
    version: str | None = None  # None: the checkpoint's text_processor_version, else "base"
    max_length: int = 1288
    num_workers: int = 0
    allow_outside_data: bool = False
    max_image_pixels: int = DEFAULT_MAX_PIXELS

    def __post_init__(self) -> None:
        if self.version is not None:
            check_version(self.version)
        _require(self.max_length > 10, "DataConfig", f"max_length={self.max_length} must be > 10")
        _require(self.num_workers >= 0, "DataConfig", f"num_workers={self.num_workers} must be >= 0")
        _require(self.max_image_pixels >= 1, "DataConfig", f"max_image_pixels={self.max_image_pixels} < 1")


@dataclass(frozen=True)
class OptimizerConfig:
    """AdamW (decoupled weight decay); biases and norm weights get no decay."""

    lr: float = 1e-5
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.05

    def __post_init__(self) -> None:
        object.__setattr__(self, "betas", tuple(float(beta) for beta in self.betas))
        _require(self.lr > 0, "OptimizerConfig", f"lr={self.lr} must be > 0")
        _require(len(self.betas) == 2, "OptimizerConfig", f"betas={self.betas} needs two values")
        _require(self.weight_decay >= 0, "OptimizerConfig", f"weight_decay={self.weight_decay} must be >= 0")


@dataclass(frozen=True)
class ScheduleConfig:
    """Linear warmup over `warmup_ratio` of the run, then decay towards `min_lr_ratio` x lr."""

    warmup_ratio: float = 0.02
    decay_style: DecayStyle = "cosine"
    min_lr_ratio: float = 0.1

    def __post_init__(self) -> None:
        owner = "ScheduleConfig"
        _require(0 <= self.warmup_ratio < 1, owner, f"warmup_ratio={self.warmup_ratio} must be in [0, 1)")
        _require(self.decay_style in DECAY_STYLES, owner, f"decay_style={self.decay_style!r}")
        _require(0 <= self.min_lr_ratio <= 1, owner, f"min_lr_ratio={self.min_lr_ratio} must be in [0, 1]")


@dataclass(frozen=True)
class TrainableConfig:
    """Which parameters train: LoRA matrices (when an adapter is added), or everything (`full`), plus
    `train_patterns`, minus `freeze_patterns` (fnmatch patterns on parameter names; freezing wins).

    `lr_scales` multiplies the learning rate of matching parameters, e.g. (("mixins.eva.*", 0.1),).
    """

    full: bool = False
    train_patterns: tuple[str, ...] = ()
    freeze_patterns: tuple[str, ...] = ()
    lr_scales: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "train_patterns", tuple(self.train_patterns))
        object.__setattr__(self, "freeze_patterns", tuple(self.freeze_patterns))
        object.__setattr__(self, "lr_scales", tuple((str(p), float(s)) for p, s in self.lr_scales))
        for pattern, scale in self.lr_scales:
            _require(scale > 0, "TrainableConfig", f"lr scale {scale} for {pattern!r} must be > 0")


@dataclass(frozen=True)
class FinetuneConfig:
    """A whole fine-tuning run: model, data, adapter, optimisation, DeepSpeed and bookkeeping."""

    from_pretrained: str
    data: DataConfig
    save_dir: str
    train_iters: int
    local_tokenizer: str | None = None
    lora: LoraConfig | None = field(default_factory=LoraConfig)
    # QLoRA: quantize the frozen base's parallel linears after loading, before adding the adapter.
    quantization: QuantConfig | None = None
    trainable: TrainableConfig = field(default_factory=TrainableConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    micro_batch_size: int = 4
    gradient_accumulation_steps: int = 1
    gradient_clipping: float = 0.1
    zero_stage: int = 2
    precision: Precision = "bf16"
    checkpoint_activations: bool = False
    vision_checkpoint_activations: bool = False
    # Permute each training image's patch embeddings at random, so that the model must read where a patch
    # is from the vision tower's position features rather than from its place in the token order;
    # scope "within_rows" permutes only inside each row of the patch grid (the column must be read, the row
    # may still be counted).
    shuffle_image_tokens: bool = False
    shuffle_scope: ShuffleScope = "all"
    tp_size: int = 1
    seed: int = 2023
    save_interval: int = 200
    eval_interval: int = 0
    eval_iters: int = 10
    eval_batch_size: int | None = None  # samples per validation batch; None: micro_batch_size
    strict_eval: bool = False  # score the whole validation / test set instead of eval_iters batches
    max_new_tokens: int = 32
    log_interval: int = 1
    resume: bool = True
    progress_bar: bool = True
    device: str | None = None
    distributed_backend: str | None = None  # None: nccl on CUDA, gloo on CPU
    deepspeed_extra: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        owner = "FinetuneConfig"
        for name in ("train_iters", "micro_batch_size", "gradient_accumulation_steps", "tp_size"):
            value = getattr(self, name)
            _require(isinstance(value, int) and value >= 1, owner, f"{name}={value!r} must be an int >= 1")
        batch = self.eval_batch_size
        _require(batch is None or batch >= 1, owner, f"eval_batch_size={batch!r} must be >= 1")
        _require(self.zero_stage in (0, 1, 2), owner, f"zero_stage={self.zero_stage}, expected 0, 1 or 2")
        _require(self.precision in PRECISIONS, owner, f"precision={self.precision!r}, expected {PRECISIONS}")
        _require(self.gradient_clipping >= 0, owner, f"gradient_clipping={self.gradient_clipping} < 0")
        scope = self.shuffle_scope
        _require(scope in SHUFFLE_SCOPES, owner, f"shuffle_scope={scope!r}, expected one of {SHUFFLE_SCOPES}")
        for name in ("save_interval", "eval_interval", "log_interval", "eval_iters"):
            _require(getattr(self, name) >= 0, owner, f"{name}={getattr(self, name)} must be >= 0")
        has_trainable = self.lora is not None or self.trainable.full or self.trainable.train_patterns
        _require(
            bool(has_trainable),
            owner,
            "nothing would train: add a LoRA adapter, set full fine-tuning, or give train patterns",
        )
        if self.quantization is not None:
            self._check_lora_only(owner)

    def _check_lora_only(self, owner: str) -> None:
        bits = self.quantization.bits
        conflicts = [
            message
            for is_conflict, message in (
                (self.lora is None, "no LoRA adapter (--no_lora / --full)"),
                (self.trainable.full, "full fine-tuning (--full)"),
                (
                    bool(self.trainable.train_patterns),
                    f"train_patterns {list(self.trainable.train_patterns)}",
                ),
            )
            if is_conflict
        ]
        _require(
            not conflicts,
            owner,
            f"quantization=int{bits} (--quant {bits}) trains a LoRA adapter on a frozen quantized base "
            f"and nothing else; it cannot be combined with {' and '.join(conflicts)}",
        )

    @property
    def warmup_iters(self) -> int:
        """Optimizer steps of linear warmup."""
        return int(self.schedule.warmup_ratio * self.train_iters)

    def to_json(self) -> dict:
        """A JSON-friendly record of the run (written beside its checkpoints)."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["lora"] = None if self.lora is None else self.lora.to_json()
        data["quantization"] = None if self.quantization is None else self.quantization.to_json()
        for name in ("data", "trainable", "optimizer", "schedule"):
            data[name] = {f.name: getattr(data[name], f.name) for f in fields(data[name])}
        return json.loads(json.dumps(data))


# Keys of a DeepSpeed JSON that this package sets itself from the config.
_MANAGED_KEYS = (
    "train_batch_size",
    "train_micro_batch_size_per_gpu",
    "gradient_accumulation_steps",
    "gradient_clipping",
    "bf16",
    "fp16",
    "optimizer",
    "scheduler",
    "steps_per_print",
    "zero_allow_untested_optimizer",
)


def read_deepspeed_json(path: str | Path) -> dict:
    """Parse a DeepSpeed config file, naming it in any error."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"DeepSpeed config {path}: file not found") from None
    except json.JSONDecodeError as error:
        raise ConfigError(f"DeepSpeed config {path}: not valid JSON ({error})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"DeepSpeed config {path}: expected a JSON object")
    return raw


def settings_from_deepspeed_json(raw: Mapping, source: str = "DeepSpeed config") -> dict:
    """Translate a DeepSpeed JSON into `FinetuneConfig` field values plus `deepspeed_extra`.

    The optimizer is always AdamW built here and the schedule is ours, so an `optimizer` section
    contributes only its hyper-parameters and a `scheduler` section is an error.
    """
    if "scheduler" in raw:
        raise ConfigError(f"{source}: 'scheduler' is not supported; use --warmup / --lr-decay-style instead")
    settings: dict = {}
    pairs = (
        ("train_micro_batch_size_per_gpu", "micro_batch_size"),
        ("gradient_accumulation_steps", "gradient_accumulation_steps"),
        ("gradient_clipping", "gradient_clipping"),
    )
    for key, name in pairs:
        if key in raw:
            settings[name] = raw[key]
    if raw.get("bf16", {}).get("enabled") and raw.get("fp16", {}).get("enabled"):
        raise ConfigError(f"{source}: bf16 and fp16 are both enabled")
    if "bf16" in raw or "fp16" in raw:
        is_bf16, is_fp16 = raw.get("bf16", {}).get("enabled"), raw.get("fp16", {}).get("enabled")
        settings["precision"] = "bf16" if is_bf16 else "fp16" if is_fp16 else "fp32"
    zero = raw.get("zero_optimization", {})
    if "stage" in zero:
        settings["zero_stage"] = zero["stage"]
    settings.update(_optimizer_settings(raw.get("optimizer"), source))
    extra = {key: value for key, value in raw.items() if key not in _MANAGED_KEYS}
    if "fp16" in raw:
        extra["fp16_options"] = {k: v for k, v in raw["fp16"].items() if k != "enabled"}
    settings["deepspeed_extra"] = extra
    return settings


def _optimizer_settings(section: Mapping | None, source: str) -> dict:
    if section is None:
        return {}
    kind = str(section.get("type", "AdamW")).lower()
    if kind not in ("adam", "adamw"):
        raise ConfigError(
            f"{source}: optimizer type {section.get('type')!r} is not supported (Adam/AdamW only)"
        )
    params = dict(section.get("params", {}))
    if kind == "adam" and params.get("adam_w_mode") is False:
        raise ConfigError(f"{source}: Adam with adam_w_mode false (L2 decay) is not supported; use AdamW")
    known = {"lr", "betas", "eps", "weight_decay"}
    return {"optimizer": {key: params[key] for key in known if key in params}}


def merge_settings(base: Mapping, overrides: Mapping) -> dict:
    """JSON settings overridden by explicitly given flags; nested `optimizer` values merge field by field."""
    merged = dict(base)
    for key, value in overrides.items():
        if key == "optimizer":
            merged["optimizer"] = {**merged.get("optimizer", {}), **value}
        else:
            merged[key] = value
    return merged


def build_finetune_config(settings: Mapping) -> FinetuneConfig:
    """A `FinetuneConfig` from flat settings (nested dicts for optimizer, schedule, data, trainable)."""
    values = dict(settings)
    for name, cls in (
        ("quantization", QuantConfig),
        ("optimizer", OptimizerConfig),
        ("schedule", ScheduleConfig),
        ("data", DataConfig),
        ("trainable", TrainableConfig),
    ):
        if isinstance(values.get(name), Mapping):
            values[name] = cls(**values[name])
    return FinetuneConfig(**values)


def deepspeed_config(config: FinetuneConfig, data_parallel_size: int) -> dict:
    """The dict passed to `deepspeed.initialize`: the JSON's other keys plus the values this run manages."""
    extra = dict(config.deepspeed_extra)
    fp16_options = extra.pop("fp16_options", {})
    zero = dict(extra.pop("zero_optimization", {}))
    zero["stage"] = config.zero_stage
    result = {
        **extra,
        "train_micro_batch_size_per_gpu": config.micro_batch_size,
        "gradient_accumulation_steps": config.gradient_accumulation_steps,
        "train_batch_size": config.micro_batch_size * config.gradient_accumulation_steps * data_parallel_size,
        "gradient_clipping": config.gradient_clipping,
        "zero_optimization": zero,
        "bf16": {"enabled": config.precision == "bf16"},
        "fp16": {**fp16_options, "enabled": config.precision == "fp16"},
        # The optimizer is a torch AdamW built by this package (DeepSpeed's own JIT-compiles on CPU).
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
    }
    return result


def resolve_version(config: FinetuneConfig, checkpoint_version: str | None) -> FinetuneConfig:
    """`config` with its prompt version made concrete: as given, else the checkpoint's, else "base"."""
    version = config.data.version or checkpoint_version or "base"
    return replace(config, data=replace(config.data, version=version))
