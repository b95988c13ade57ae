"""The run configuration: every remedy cnnclinic knows is one switch here.

A config is built from defaults, an optional YAML file and ``--set key=value`` overrides
(dotted keys such as ``model.activation=leaky_relu``). Prescriptions from the doctor are
expressed as the same ``key=value`` strings, so a cure can be applied by hand or by
``--auto-repair`` in exactly the same way.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cnnclinic.errors import UserError

Activation = Literal["sigmoid", "tanh", "relu", "leaky_relu", "elu", "prelu", "selu", "gelu"]
Init = Literal["default", "he", "xavier", "normal", "orthogonal"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SyntheticFishConfig(_Section):
    """Procedural fish used when ``data.source`` is ``synthetic-fish``."""

    species: int = Field(5, ge=2, le=12)
    per_class: int = Field(120, ge=2)
    # Explicit per-species counts (imbalance); overrides per_class when given.
    class_counts: list[int] | None = None
    # Index of a species that differs from species 0 only by fin colour (the analysis's "Species X").
    hard_species: int | None = None
    hard_blur: float = Field(0.0, ge=0.0, le=5.0)
    # Share of photos filed under a wrong species, as in a folder scraped together (label noise).
    mislabelled: float = Field(0.0, ge=0.0, lt=1.0)
    size: int = Field(64, ge=16, le=512)
    seed: int = 0


class AugmentConfig(_Section):
    hflip: bool = False
    rotation: float = Field(0.0, ge=0.0, le=180.0)
    color_jitter: float = Field(0.0, ge=0.0, le=1.0)
    random_resized_crop: bool = False
    policy: Literal["none", "trivialaugment", "randaugment"] = "none"
    mixup_alpha: float = Field(0.0, ge=0.0)
    cutmix_alpha: float = Field(0.0, ge=0.0)
    # Classes (by name) that get a stronger augmentation pipeline: the targeted cure for a lagging class.
    strong_classes: list[str] = []


class DataConfig(_Section):
    # A folder in ImageFolder layout, or a built-in dataset: "synthetic-fish" or "digits".
    source: str = "synthetic-fish"
    image_size: int = Field(64, ge=8, le=1024)
    val_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    test_fraction: float = Field(0.0, ge=0.0, lt=1.0)
    val_dir: str | None = None
    groups_csv: str | None = None
    group_column: str | None = None
    image_column: str = "image"
    split_seed: int = 0
    # Keep at most this many images per class (handy for quick experiments); None keeps all.
    max_per_class: int | None = Field(None, ge=1)
    balanced_sampling: bool = False
    num_workers: int = Field(0, ge=0, le=64)
    # Page-locked batches for faster host-to-GPU copies (used on CUDA only, where it helps).
    pin_memory: bool = True
    synthetic: SyntheticFishConfig = SyntheticFishConfig()
    augment: AugmentConfig = AugmentConfig()

    @model_validator(mode="after")
    def _fractions_leave_training_data(self) -> DataConfig:
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError("data.val_fraction + data.test_fraction must stay below 0.9")
        if self.groups_csv and not self.group_column:
            raise ValueError("data.groups_csv needs data.group_column (the column that groups images)")
        return self


class ModelConfig(_Section):
    arch: Literal["plain_cnn", "resnet18", "efficientnet_b0", "mobilenet_v3_small"] = "plain_cnn"
    # plain_cnn: number of conv layers, channels of the first one (doubling at each pooling stage).
    depth: int = Field(4, ge=1, le=64)
    width: int = Field(32, ge=1, le=1024)
    kernel_size: int = Field(3, ge=1, le=11)
    pool: Literal["max", "avg", "none"] = "max"
    activation: Activation = "relu"
    batchnorm: bool = False
    residual: bool = False
    init: Init = "default"
    init_std: float = Field(0.01, gt=0.0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    head: list[int] = [128]
    attention: Literal["none", "se", "cbam"] = "none"
    # Local file with pretrained weights for torchvision backbones (never downloaded at run time).
    pretrained: str | None = None


class TrainConfig(_Section):
    epochs: int = Field(10, ge=1, le=100000)
    # The global batch: under torchrun each of the N processes takes batch_size / N images per step.
    batch_size: int = Field(64, ge=1)
    optimizer: Literal["sgd", "adam", "adamw"] = "adam"
    lr: float = Field(1e-3, gt=0.0, le=100.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    nesterov: bool = False
    weight_decay: float = Field(0.0, ge=0.0)
    grad_clip: float | None = Field(None, gt=0.0)
    loss: Literal["cross_entropy", "weighted_cross_entropy", "focal"] = "cross_entropy"
    focal_gamma: float = Field(2.0, ge=0.0)
    # "none", "balanced" (inverse class frequency) or one weight per class.
    focal_alpha: Literal["none", "balanced"] | list[float] = "none"
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    schedule: Literal["constant", "step", "cosine", "cyclic", "onecycle"] = "constant"
    step_epochs: int = Field(10, ge=1)
    step_gamma: float = Field(0.1, gt=0.0, le=1.0)
    cyclic_mode: Literal["triangular", "triangular2", "exp_range"] = "triangular"
    # Cyclic bounds; default to lr/10 .. lr.
    cyclic_base_lr: float | None = Field(None, gt=0.0)
    cyclic_max_lr: float | None = Field(None, gt=0.0)
    # Half-cycle length in epochs (Smith recommends 2-10 epochs).
    cyclic_step_epochs: float = Field(2.0, gt=0.0)
    early_stopping_patience: int | None = Field(None, ge=1)
    seed: int = 0
    deterministic: bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"
    checkpoint_every: int = Field(1, ge=1)
    # Speed switches: bf16 autocast for forward and loss, NHWC memory layout, torch.compile of the training model.
    precision: Literal["fp32", "bf16"] = "fp32"
    channels_last: bool = False
    compile: bool = False


class DoctorConfig(_Section):
    enabled: bool = True
    # Per-layer activation statistics are sampled every this many steps (hooks removed in between).
    sample_every: int = Field(10, ge=1)
    # Threshold overrides, {symptom_id: {threshold_name: value}}; validated by the doctor.
    thresholds: dict[str, dict[str, float]] = {}


class RepairConfig(_Section):
    enabled: bool = False
    max_attempts: int = Field(4, ge=1, le=20)
    # All attempts together (the original run included) train at most this many times train.epochs epochs.
    epoch_budget: float = Field(1.5, ge=1.0, le=20.0)


class Config(_Section):
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    doctor: DoctorConfig = DoctorConfig()
    repair: RepairConfig = RepairConfig()

    def with_overrides(self, overrides: list[str] | dict[str, Any]) -> Config:
        """A new config with dotted-key overrides applied (``["model.activation=elu"]`` or a dict)."""
        return build_config(base=self.to_dict(), overrides=overrides)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def parse_override(text: str) -> tuple[str, Any]:
    """``"model.head=[64, 32]"`` -> ``("model.head", [64, 32])``; values are parsed as YAML."""
    if "=" not in text:
        raise UserError(f"config: --set expects key=value, got {text!r}")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key, value


# Model keys that add or remove no weight tensor: trained weights stay meaningful after the change
# (dropout only changes what the head sees during training).
WEIGHT_PRESERVING_MODEL_KEYS = frozenset({"model.dropout"})


def needs_fresh_weights(changes: list[str]) -> bool:
    """Whether config changes alter the architecture, so training must restart from fresh weights."""
    return any(
        key.startswith("model.") and key not in WEIGHT_PRESERVING_MODEL_KEYS
        for key, _ in map(parse_override, changes)
    )


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value


def _allowed_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None) if field else None
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
        else:
            return []
    return list(model.model_fields)


def _format_validation_error(error: ValidationError) -> str:
    first = error.errors()[0]
    loc = tuple(first["loc"])
    # Keys come from the user (typos, dict keys of doctor.thresholds): escape control characters to stay on one line.
    key = "".join(c if c.isprintable() else repr(c)[1:-1] for c in ".".join(str(p) for p in loc)) or "config"
    if first["type"] == "extra_forbidden":
        allowed = _allowed_keys(Config, loc)
        return f"config: unknown key '{key}' (allowed: {', '.join(allowed)})"
    ctx = first.get("ctx") or {}
    if "expected" in ctx:
        return f"config: {key}={first.get('input')!r} is not allowed (allowed: {ctx['expected']})"
    message = first["msg"].removeprefix("Value error, ")
    if not loc or isinstance(first.get("input"), dict):
        return f"config: {message}"
    return f"config: {key}={first.get('input')!r}: {message}"


def build_config(
    base: dict[str, Any] | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
) -> Config:
    """Validate ``base`` (a nested dict) with ``overrides`` applied; raise UserError on any problem."""
    tree: dict[str, Any] = copy.deepcopy(base or {})
    items = overrides.items() if isinstance(overrides, dict) else map(parse_override, overrides or [])
    for key, value in items:
        _set_dotted(tree, key, value)
    try:
        return Config.model_validate(tree)
    except ValidationError as error:
        raise UserError(_format_validation_error(error)) from None


def load_config(path: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None) -> Config:
    """Load a YAML config file (optional) and apply overrides."""
    base: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"config: file not found: {path}")
        try:
            base = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as error:
            raise UserError(f"config: {path} is not valid YAML ({str(error).splitlines()[0]})") from None
        if not isinstance(base, dict):
            raise UserError(f"config: {path} must hold a mapping of sections (data, model, train, ...)")
    return build_config(base, overrides)
