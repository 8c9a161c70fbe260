"""Typed run configuration: the YAML schema, loading, and ``--set key=value`` overrides.

The configuration is validated once, here, at the edge. Everything below the CLI takes plain
values (numbers, tuples, paths) pulled out of these models. Unknown keys and wrong types are
:class:`~medseg.errors.ConfigError` before any work starts.
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from medseg.errors import ConfigError
from medseg.geometry import check_patch_size
from medseg.norm_registry import NORMS, norm_spec

PosInt = Annotated[int, Field(ge=1)]
Triple = tuple[PosInt, PosInt, PosInt]
MAX_CONFIG_VALUES = 100_000  # a YAML file whose anchors/aliases expand beyond this is refused
MAX_ECHO = 120  # characters of a bad value echoed in an error message
NormName = Literal[NORMS]  # type: ignore[valid-type]  # the registry's names (medseg/norm_registry.py)
AUTO = "auto"  # a value the dataset decides: planned at the start of training (medseg/models/planner.py)
Auto = Literal["auto"]


def inductor_compiler() -> str:
    """The C++ compiler TorchInductor runs: ``$CXX``, else g++ (clang++ on macOS)."""
    return os.environ.get("CXX") or ("clang++" if sys.platform == "darwin" else "g++")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Strict):
    """Where the data is and how it is split and cached."""

    root: Path | None = Field(None, description="MSD-layout folder (dataset.json, imagesTr, labelsTr).")
    fold: int = Field(0, ge=0, description="Validation fold index, 0 <= fold < num_folds.")
    num_folds: int = Field(5, ge=2)
    cache: Literal["memory", "disk", "none"] = "memory"
    cache_dir: Path = Path(".medseg_cache")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes for augmentation.")
    persistent_workers: bool = Field(True, description="Keep the DataLoader workers (and their copy of the cached "
                                                       "volumes) alive across epochs; only with num_workers > 0.")

    @model_validator(mode="after")
    def _fold_in_range(self):
        if self.fold >= self.num_folds:
            raise ValueError(f"fold {self.fold} is out of range for num_folds={self.num_folds}")
        return self


class PreprocessConfig(_Strict):
    """Resampling and intensity normalization (applied identically at training and inference)."""

    target_spacing: tuple[float, float, float] | None = Field(
        None, description="Voxel spacing in mm along the RAS axes; null = the dataset's median spacing."
    )
    image_interpolation: Literal["linear", "spline"] = "linear"
    crop_foreground: bool = Field(False, description="Crop each volume to its nonzero bounding box.")

    @field_validator("target_spacing")
    @classmethod
    def _positive(cls, v):
        if v is not None and any(s <= 0 for s in v):
            raise ValueError("target_spacing must be positive (mm)")
        return v


class SamplingConfig(_Strict):
    """Patch sampling for training."""

    patch_size: Triple | None = Field(None, description="Patch size in voxels; null = derived from the fingerprint.")
    foreground_oversampling: float = Field(
        0.33, ge=0.0, le=1.0, description="Share of patches centred on a foreground voxel (classes balanced)."
    )
    max_patch_voxels: int = Field(128**3, gt=0, description="Upper bound on a derived patch size.")


class AugmentConfig(_Strict):
    """On-the-fly augmentation; every transform can be switched off."""

    flip: bool = True
    rotate_scale: bool = True
    rotation_degrees: float = Field(15.0, ge=0, le=180)
    scale_range: float = Field(0.1, ge=0, lt=1)
    gamma: bool = True
    noise: bool = True
    brightness_contrast: bool = True
    probability: float = Field(0.2, ge=0, le=1, description="Probability of each intensity/spatial transform.")
    on_device: bool = Field(False, description="Augment on the training device (GPU) after the patch crop, instead of "
                                               "in the DataLoader workers; same random draws per patch.")


class ModelConfig(_Strict):
    """The 3D U-Net (MONAI DynUNet). ``filters``, ``strides`` and ``kernel_size`` may be ``auto``: the
    network is then planned from the dataset at the start of training (nnU-Net's rules,
    :mod:`medseg.models.planner`), and the run's ``config.yaml`` holds what was planned."""

    norm: NormName = "instance"
    num_groups: int = Field(8, ge=1, description="Groups for norm=group.")
    filters: list[PosInt] | Auto = Field(default_factory=lambda: [16, 32, 64, 128], max_length=12,
                                         description="Feature maps per level (each >= 1), or auto.")
    strides: list[PosInt | Triple] | Auto = Field(
        default_factory=lambda: [1, 2, 2, 2], max_length=12,
        description="Per level (each >= 1); the first is usually 1. auto (with filters: auto) plans them."
    )
    kernel_size: PosInt | list[Triple] | Auto = Field(
        3, description="Odd convolution kernel size (padding keeps the shape), one per level (triples), or auto.")
    plan_memory_gb: float | None = Field(None, gt=0, description="Training memory budget (GB) of a planned "
                                         "network; null = the planner's default for the device.")
    deep_supervision: bool = False
    res_block: bool = False

    @property
    def planned(self) -> bool:
        """Some of the network is ``auto``: planned from the dataset at the start of training."""
        return AUTO in (self.filters, self.strides, self.kernel_size)

    @model_validator(mode="after")
    def _levels(self):
        if self.strides == AUTO and self.filters != AUTO:
            raise ValueError("strides: auto plans the levels, so filters must be auto too")
        if self.strides == AUTO and self.kernel_size != AUTO and "kernel_size" in self.model_fields_set:
            raise ValueError("strides: auto plans the kernel sizes with them: set kernel_size: auto (or leave it out)")
        if self.strides == AUTO:
            object.__setattr__(self, "kernel_size", AUTO)  # planned with the strides
            return self
        if self.kernel_size == AUTO:
            raise ValueError("kernel_size: auto needs strides: auto (the kernels are planned with the levels)")
        if self.filters != AUTO and len(self.filters) != len(self.strides):
            raise ValueError(f"filters ({len(self.filters)}) and strides ({len(self.strides)}) need one entry per level")
        if len(self.strides) < 2:
            raise ValueError("the U-Net needs at least 2 levels")
        if isinstance(self.kernel_size, list) and len(self.kernel_size) != len(self.strides):
            raise ValueError(f"kernel_size has {len(self.kernel_size)} levels and strides {len(self.strides)}")
        return self

    @field_validator("kernel_size")
    @classmethod
    def _odd_kernel(cls, v):
        sizes = [v] if isinstance(v, int) else [k for t in v for k in t] if isinstance(v, list) else []
        if any(k % 2 == 0 for k in sizes):
            raise ValueError("must be odd: an even kernel cannot keep the feature maps' shape, so the skip "
                             "connections would not line up")
        return v


class TrainConfig(_Strict):
    """Optimization."""

    epochs: int = Field(50, ge=1)
    iterations_per_epoch: int = Field(100, ge=1)
    batch_size: PosInt | Auto = Field(2, description="Patches per iteration (per process), or auto: the planner's "
                                        "(with a planned network: memory budget, at most 5 % of the dataset's voxels).")
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.01, gt=0)
    momentum: float = Field(0.99, ge=0, lt=1)
    weight_decay: float = Field(3e-5, ge=0)
    warmup_epochs: int = Field(0, ge=0)
    poly_exponent: float = Field(0.9, ge=0)
    grad_clip: float | None = Field(12.0, gt=0)
    amp: Literal["bf16", "fp16", "none"] = Field(
        "bf16", description="Autocast precision: bf16/fp16 on CUDA; on CPU bf16 runs only where the CPU computes it "
                            "natively (AVX512-BF16/AMX), else float32. The run's tag 'amp' records what ran.")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    deterministic: bool = False
    channels_last: bool = Field(False, description="channels_last_3d memory format (faster convolutions on CPU oneDNN "
                                                   "and on GPU tensor cores).")
    sync_bn: bool = Field(True, description="Under DDP (torchrun), norm=batch uses SyncBatchNorm: statistics over "
                                            "the global batch; false keeps per-GPU batch norm.")
    compile: bool | Auto = Field(AUTO, description="torch.compile the network for training (TorchInductor; needs a "
                                 "C++ compiler). The first iterations are slower while it compiles. auto: on for CUDA "
                                 "runs long enough to repay the compilation (see medseg.devices.effective_compile), "
                                 "off on CPU; the run's `compile` tag says what ran.")
    init_from: str | None = Field(None, description="Start from a trained model's weights (fine-tuning): a model "
                                  "directory or an MLflow model URI (models:/..., runs:/...). Layers that match in "
                                  "name and shape are loaded, the others start fresh.")
    checkpoint_every_iterations: int | None = Field(
        None, ge=1, description="Also checkpoint every N iterations (a checkpoint is always written each epoch).")

    @model_validator(mode="after")
    def _compiler_for_compile(self):
        cxx = inductor_compiler()
        if self.compile is True and not shutil.which(cxx):
            raise ValueError(f"train.compile needs the C++ compiler TorchInductor runs ({cxx}: $CXX, else g++; "
                             "clang++ on macOS), which is not on PATH; install it or set train.compile: false")
        return self


class ValidationConfig(_Strict):
    """Sliding-window validation on whole volumes."""

    every_n_epochs: int = Field(1, ge=1)
    overlap: float = Field(0.5, ge=0, lt=1)
    sw_batch_size: int = Field(4, ge=1)
    hd95: bool = True
    tta: bool = Field(False, description="Mirroring test-time augmentation in the final validation of the best model "
                                         "(as nnU-Net's validation does); per-epoch validation never uses it.")
    batch_stats: bool = Field(False, description="norm=batch only: also validate with batch statistics instead of "
                                                 "the running averages, and log the gap (the train/test discrepancy).")


class TrackingConfig(_Strict):
    """MLflow."""

    experiment: str = "medseg"
    tracking_uri: str | None = Field(None, description="null = $MLFLOW_TRACKING_URI or sqlite:///mlflow.db")
    run_name: str | None = Field(None, description="MLflow run name; null = dataset_norm_bsN_foldK_time.")
    parent_run_id: str | None = Field(None, description="Make the run a child of this MLflow run (a sweep sets it).")
    tags: dict[str, str] = Field(default_factory=dict, description="Extra MLflow tags on the run.")
    system_metrics_interval: float | None = Field(
        10.0, gt=0, description="Seconds between samples of MLflow's system metrics (CPU, memory, disk, network; "
                                "GPU utilization and memory with pynvml), logged by the training process (rank 0 "
                                "under torchrun); null = off.")
    log_model: bool = Field(True, description="Log the best model as an MLflow Model (pyfunc, models from code): "
                                              "mlflow.pyfunc.load_model, mlflow models serve and the registry use it.")
    register_model: str | None = Field(None, description="Register the logged model under this name in the MLflow "
                                                         "Model Registry (medseg train --register NAME).")
    register_alias: str | None = Field("champion", description="Point this alias of the registered model at the new "
                                                               "version (models:/NAME@champion); null = none.")

    @model_validator(mode="after")
    def _register_needs_model(self):
        if self.register_model and not self.log_model:
            raise ValueError("register_model needs log_model: true (the registry holds the logged MLflow Model)")
        return self

    @field_validator("run_name")
    @classmethod
    def _folder_name(cls, v):
        if v is not None and (not v.strip() or v in (".", "..") or any(c in v for c in "/\\\0") or len(v) > 200):
            raise ValueError("must be a plain folder name (no / or \\, not . or .., at most 200 characters): the run "
                             "folder is output_dir/<run_name>")
        return v


class Config(_Strict):
    """A whole training run's configuration."""

    seed: int = 0
    output_dir: Path = Path("runs")
    data: DataConfig = DataConfig()
    preprocess: PreprocessConfig = PreprocessConfig()
    sampling: SamplingConfig = SamplingConfig()
    augment: AugmentConfig = AugmentConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    validation: ValidationConfig = ValidationConfig()
    tracking: TrackingConfig = TrackingConfig()

    @model_validator(mode="after")
    def _network_fits(self):
        if self.sampling.patch_size is not None and self.model.strides != AUTO:
            check_patch_size(self.sampling.patch_size, self.model.strides)
        if self.model.filters != AUTO:
            norm_spec(self.model.norm, list(self.model.filters), self.model.num_groups)
        return self


def _format_validation_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        got = repr(e.get("input"))
        got = got if len(got) <= MAX_ECHO else got[:MAX_ECHO] + "..."
        lines.append(f"  {loc}: {msg}" + ("" if e["type"] == "extra_forbidden" else f" (got {got})"))
    return "invalid configuration:\n" + "\n".join(lines)


def _count_values(node: Any, limit: int) -> int:
    """Values in a loaded YAML document, counting every alias expansion, stopping past ``limit``."""
    count, stack = 0, [node]
    while stack and count <= limit:
        item = stack.pop()
        count += 1
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return count


def _set_dotted(doc: dict, dotted: str, value: Any, source: str) -> None:
    keys = dotted.split(".")
    node = doc
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"cannot set {dotted!r}: {k!r} is not a section", source)
    node[keys[-1]] = value


def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    """Parse ``key.sub=value`` strings; values are read as YAML (``2``, ``true``, ``[1,2]``).

    Raises:
        ConfigError: an override has no ``=`` or an empty key.
    """
    out = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} must look like key.subkey=value", "--set")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        out.append((key.strip(), value))
    return out


# What ``medseg train --resume RUN --set key=value`` may change: where things are and how fast they
# run, never what the run computes (network, data split, batch size, iteration plan, schedule).
RESUME_OVERRIDES = ("data.root", "data.cache", "data.cache_dir", "data.num_workers", "data.persistent_workers",
                    "train.device", "train.checkpoint_every_iterations", "validation.sw_batch_size",
                    "tracking.tracking_uri")


def check_resume_overrides(overrides: list[str]) -> None:
    """Refuse ``--set`` overrides that would make a resumed run compute something other than what
    its checkpoint and recorded ``config.yaml`` say.

    Raises:
        ConfigError: naming the refused keys and the ones that may change (:data:`RESUME_OVERRIDES`).
    """
    refused = [k for k, _ in parse_overrides(overrides) if k not in RESUME_OVERRIDES]
    if refused:
        raise ConfigError(f"{', '.join(refused)} cannot change when a run is resumed: its checkpoint, learning-rate "
                          "schedule and recorded config.yaml fix them. Start a new run instead; on resume only "
                          f"{', '.join(RESUME_OVERRIDES)} may change", "--set")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config, apply ``--set`` overrides, and validate it.

    Args:
        path: a YAML file; ``None`` starts from the defaults.
        overrides: ``["train.lr=0.001", "model.norm=group"]``.

    Returns:
        The validated :class:`Config`.

    Raises:
        ConfigError: the file is missing or not YAML, a key is unknown, or a value has the wrong type.
    """
    source = str(path) if path else "<defaults>"
    doc: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError("config file not found", p)
        try:
            doc = yaml.safe_load(p.read_text()) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise ConfigError(f"not valid YAML: {e}", p) from None
        if not isinstance(doc, dict):
            raise ConfigError("the top level of a config must be a mapping of sections", p)
        if _count_values(doc, MAX_CONFIG_VALUES) > MAX_CONFIG_VALUES:
            raise ConfigError(f"the config expands to more than {MAX_CONFIG_VALUES} values (nested YAML "
                              "anchors/aliases?); a medseg config has about a hundred", p)
    for key, value in parse_overrides(overrides or []):
        _set_dotted(doc, key, value, source)
    try:
        return Config.model_validate(doc)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(e), source) from None


def config_to_yaml(cfg: Config) -> str:
    """The resolved config as YAML text (paths as strings)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def flatten(cfg: Config) -> dict[str, str]:
    """Every resolved value as ``section.key -> str`` (for MLflow params)."""
    out: dict[str, str] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            out[prefix] = str(node)

    walk("", cfg.model_dump(mode="json"))
    return out
