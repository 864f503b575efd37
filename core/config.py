"""config.toml -> a frozen dataclass tree, validated once at start.

Every error names the key (section.key), the value and what is allowed. Relative paths are
resolved against the config file's folder, so a config works wherever the daemon is started.
"""

from __future__ import annotations

import dataclasses
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wellwatch.core.packages.description import is_package
from wellwatch.core.config_files import check_endpoint_pair, read_toml
from wellwatch.core.errors import ConfigError, NamingError, StartupError
from wellwatch.core.naming import PRESETS, compile_user_pattern
from wellwatch.core.plate import PLATE_FORMATS, normalise_well
from wellwatch.core.files.tiff import FrameLimits
from wellwatch.core.segmentation.package import PackageParams
from wellwatch.core.segmentation.classical import ClassicalParams
from wellwatch.core.validation import between, build, choice


@dataclass(frozen=True)
class WatchConfig:
    root: str = "acquisition/data"
    naming: str = field(default="scanr", metadata=choice(*PRESETS))
    pattern: str = ""
    observer: str = field(default="native", metadata=choice("native", "polling"))
    settle_s: float = field(default=0.3, metadata=between(0.0, 3600.0))
    settle_polls: int = field(default=2, metadata=between(1, 100))
    completeness: str = field(default="structure", metadata=choice("structure", "settle"))
    zero_tail_max_wait_s: float = field(default=60.0, metadata=between(0.0, 86400.0))  # see gate.CompletenessGate
    reconcile_s: float = field(default=10.0, metadata=between(0.1, 86400.0))
    recursive: bool = True
    extensions: tuple[str, ...] = (".tif", ".tiff", ".nd2")


@dataclass(frozen=True)
class PlateConfig:
    format: int = field(default=96, metadata=choice(*PLATE_FORMATS))
    name: str = ""
    fields_per_well: int = field(default=0, metadata=between(0, 100000))
    default_well: str = "A1"
    layout: str = field(default="auto", metadata=choice("auto", "none"))
    map: str = ""  # plate map CSV for dose-response; "" = none
    # um per pixel of the acquisition's frames; 0 = unknown (a segmentation model then sees frames as they are)
    pixel_size_um: float = field(default=0.0, metadata=between(0.0, 1000.0))


@dataclass(frozen=True)
class ChannelsConfig:
    label_free: tuple[str, ...] = ("BF",)
    missing_after_s: float = field(default=60.0, metadata=between(0.0, 86400.0))
    # segment on this file channel (e.g. a nuclear stain "LIVE") instead of the first label-free one;
    # crops are still cut from the label-free channel. "" = the first label-free channel.
    segment_on: str = ""

    def files(self) -> tuple[str, ...]:
        """Every file channel a field needs: the model's, in its order, then the segmentation channel."""
        extra = (self.segment_on,) if self.segment_on and self.segment_on not in self.label_free else ()
        return tuple(self.label_free) + extra

    def segment_index(self) -> int:
        """Which of `files()` segmentation runs on."""
        return self.files().index(self.segment_on) if self.segment_on else 0


@dataclass(frozen=True)
class ModelSlot:
    path: str = ""


@dataclass(frozen=True)
class ModelsConfig:
    live_dead: ModelSlot = ModelSlot()
    segmentation: ModelSlot = ModelSlot()  # "" = the bundled phase-contrast model
    cell_type: ModelSlot = ModelSlot()     # "" = no cell types
    # each path: an exported .onnx, or a BioImage.IO package (folder, bioimageio.yaml or .zip; needs the
    # bioimageio extra): a segmentation package is served with [segmentation.package]
    cell_live_dead: ModelSlot = ModelSlot()  # a per-cell live/dead crop model; "" = tiles at centroids


@dataclass(frozen=True)
class CellposeConfig:
    """method = "cellpose": a Cellpose network exported to ONNX (`wellwatch cellpose export`)."""
    model: str = ""  # the exported .onnx file; a built-in name or PyTorch weights: refused with the export command
    diameter_um: float = field(default=0.0, metadata=between(0, 10000))  # 0 = the model's training cells'


@dataclass(frozen=True)
class SegmentationConfig:
    """Per-cell counts: `method` none (tiles only), classical, model ([models.segmentation]) or
    cellpose ([segmentation.cellpose])."""
    method: str = field(default="none", metadata=choice("none", "classical", "model", "cellpose"))
    workers: int = field(default=0, metadata=between(0, 256))  # processes; 0 = one per core
    max_batch: int = field(default=16, metadata=between(1, 4096))  # network tiles per batch
    tta: bool = False  # model method: also segment each tile flipped 3 ways and average (~4x the network's cost)
    classical: ClassicalParams = ClassicalParams()
    package: PackageParams = PackageParams()  # a BioImage.IO package's map -> cells (models.segmentation.path)
    cellpose: CellposeConfig = CellposeConfig()

    @property
    def network(self) -> bool:
        """A segmentation network runs in the batched inference path (model or cellpose)."""
        return self.method in ("model", "cellpose")


@dataclass(frozen=True)
class CudaConfig:
    """The CUDA provider's options, passed to ONNX Runtime as they are named there."""
    device_id: int = field(default=0, metadata=between(0, 64))
    cudnn_conv_algo_search: str = field(default="EXHAUSTIVE", metadata=choice("EXHAUSTIVE", "HEURISTIC", "DEFAULT"))
    arena_extend_strategy: str = field(default="kSameAsRequested",
                                       metadata=choice("kNextPowerOfTwo", "kSameAsRequested"))
    gpu_mem_limit_mb: int = field(default=0, metadata=between(0, 10**7))  # 0 = no limit
    do_copy_in_default_stream: bool = True


@dataclass(frozen=True)
class TensorrtConfig:
    """The TensorRT provider, tried before CUDA when `enable` and ONNX Runtime has it."""
    enable: bool = False
    engine_cache_dir: str = "trt-engines"  # engines built once per model, batch size range and GPU
    fp16: bool = False                     # TensorRT may run float32 models' layers in float16


@dataclass(frozen=True)
class InferenceConfig:
    device: str = field(default="auto", metadata=choice("auto", "cpu", "cuda"))
    require_gpu: bool = False
    intra_op_threads: int = field(default=0, metadata=between(0, 1024))
    spin_wait: bool = False  # ONNX Runtime's threads spin between runs (costs the CPU preparation needs)
    warmup: bool = True
    precision: str = field(default="auto", metadata=choice("auto", "fp32", "fp16"))
    io_binding: str = field(default="auto", metadata=choice("auto", "on", "off"))
    batch_sizes: tuple[int, ...] = ()  # fixed batch shapes, warmed at start; () = powers of two to max_batch
    cuda: CudaConfig = CudaConfig()
    tensorrt: TensorrtConfig = TensorrtConfig()


@dataclass(frozen=True)
class BatchingConfig:
    max_batch: int = field(default=256, metadata=between(1, 65536))
    max_delay_ms: float = field(default=20.0, metadata=between(0.0, 60000.0))


@dataclass(frozen=True)
class PipelineConfig:
    read_workers: int = field(default=2, metadata=between(1, 256))
    prepare_workers: int = field(default=0, metadata=between(0, 256))  # 0 = prepare in the read threads
    queue_size: int = field(default=64, metadata=between(1, 100000))
    max_retries: int = field(default=3, metadata=between(0, 100))
    retry_delay_s: float = field(default=1.0, metadata=between(0.0, 3600.0))


@dataclass(frozen=True)
class PublishConfig:
    endpoint: str = "tcp://127.0.0.1:5556"
    snapshot_endpoint: str = "tcp://127.0.0.1:5557"
    send_hwm: int = field(default=100000, metadata=between(0, 10**9))
    curve_secret_key: str = ""        # the daemon's .key_secret file: "" = no encryption
    curve_allowed_clients: str = ""   # folder of allowed clients' public .key files: "" = any
    source: str = ""                  # this daemon's name in every message (a hub merges many); "" = host name
    heartbeat_s: float = field(default=1.0, metadata=between(0.0, 3600.0))  # quiet stream: last seq resent; 0 = off


@dataclass(frozen=True)
class MetricsConfig:
    port: int = field(default=9108, metadata=between(0, 65535))
    host: str = "127.0.0.1"


@dataclass(frozen=True)
class JournalConfig:
    path: str = "wellwatch-journal.sqlite"


@dataclass(frozen=True)
class ReportConfig:
    progress_s: float = field(default=10.0, metadata=between(0.0, 86400.0))  # a progress line; 0 = off
    nothing_counted_s: float = field(default=5.0, metadata=between(0.1, 3600.0))
    repeat_s: float = field(default=60.0, metadata=between(1.0, 86400.0))  # "nothing counted" again at most this often


@dataclass(frozen=True)
class IntervalsConfig:
    # nominal coverage of the per-well live-fraction intervals of a calibrated model (`wellwatch
    # calibrate`); must be one of the levels its contract's calibration measured (0.8, 0.9)
    level: float = field(default=0.9, metadata=between(0.5, 0.99))


@dataclass(frozen=True)
class Config:
    watch: WatchConfig = WatchConfig()
    plate: PlateConfig = PlateConfig()
    channels: ChannelsConfig = ChannelsConfig()
    models: ModelsConfig = ModelsConfig()
    segmentation: SegmentationConfig = SegmentationConfig()
    inference: InferenceConfig = InferenceConfig()
    batching: BatchingConfig = BatchingConfig()
    pipeline: PipelineConfig = PipelineConfig()
    publish: PublishConfig = PublishConfig()
    metrics: MetricsConfig = MetricsConfig()
    journal: JournalConfig = JournalConfig()
    limits: FrameLimits = FrameLimits()
    report: ReportConfig = ReportConfig()
    intervals: IntervalsConfig = IntervalsConfig()

    @property
    def source(self) -> str:
        """The `source` every stream message carries: publish.source, else the host name."""
        return self.publish.source or socket.gethostname()

    @property
    def plate_name(self) -> str:
        """The configured plate name, else the acquisition folder's name (scanR: parent of data/)."""
        if self.plate.name:
            return self.plate.name
        root = Path(self.watch.root)
        return (root.parent if root.name == "data" else root).name or "plate"


def load_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> Config:
    """Read and validate a config file (None: defaults). `overrides` uses dotted keys."""
    data: dict[str, Any] = {}
    base = Path.cwd()
    if path is not None:
        path = Path(path)
        data = read_toml(path)
        base = path.resolve().parent
    for dotted, value in (overrides or {}).items():
        *parents, leaf = dotted.split(".")
        node = data
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    config = _resolve_paths(build(Config, data, ""), base)
    _check_cross_keys(config)
    return config


def _resolve_paths(config: Config, base: Path) -> Config:
    """Relative paths (given or default) are relative to the config file's folder."""
    def resolve(value: str) -> str:
        return str((base / Path(value).expanduser()).resolve()) if value else value

    def resolve_model_file(value: str) -> str:  # a built-in Cellpose name stays a name
        return resolve(value) if "/" in value or "\\" in value or "." in value else value

    return dataclasses.replace(
        config,
        watch=dataclasses.replace(config.watch, root=resolve(config.watch.root)),
        models=dataclasses.replace(config.models, live_dead=ModelSlot(resolve(config.models.live_dead.path)),
                                   segmentation=ModelSlot(resolve(config.models.segmentation.path)),
                                   cell_type=ModelSlot(resolve(config.models.cell_type.path)),
                                   cell_live_dead=ModelSlot(resolve(config.models.cell_live_dead.path))),
        publish=dataclasses.replace(config.publish, curve_secret_key=resolve(config.publish.curve_secret_key),
                                    curve_allowed_clients=resolve(config.publish.curve_allowed_clients)),
        plate=dataclasses.replace(config.plate, map=resolve(config.plate.map)),
        segmentation=dataclasses.replace(config.segmentation, cellpose=dataclasses.replace(
            config.segmentation.cellpose, model=resolve_model_file(config.segmentation.cellpose.model))),
        journal=dataclasses.replace(config.journal, path=resolve(config.journal.path)),
        inference=dataclasses.replace(config.inference, tensorrt=dataclasses.replace(
            config.inference.tensorrt, engine_cache_dir=resolve(config.inference.tensorrt.engine_cache_dir))))


def _check_cross_keys(config: Config) -> None:
    if not config.watch.root:
        raise ConfigError("watch.root", "", "the acquisition folder to watch is required")
    if not config.journal.path:
        raise ConfigError("journal.path", "", "a journal file on a local disk is required")
    try:
        normalise_well(config.plate.default_well, PLATE_FORMATS[config.plate.format])
    except NamingError as e:
        raise ConfigError("plate.default_well", config.plate.default_well,
                          f"{e.reason} (plate.format = {config.plate.format})") from None
    if config.plate.map and not Path(config.plate.map).is_file():
        raise ConfigError("plate.map", config.plate.map, "no such file; give a plate map CSV or \"\" for none")
    if config.watch.naming == "regex":
        if not config.watch.pattern:
            raise ConfigError("watch.pattern", "", "required when watch.naming = 'regex'")
        compile_user_pattern(config.watch.pattern)
    elif config.watch.pattern:
        raise ConfigError("watch.pattern", config.watch.pattern,
                          "only used with watch.naming = 'regex'; remove it or set naming = 'regex'")
    if config.inference.require_gpu and config.inference.device == "cpu":
        raise ConfigError("inference.require_gpu", True, "cannot require a GPU with inference.device = 'cpu'")
    _check_inference(config.inference, config.batching.max_batch)
    check_endpoint_pair("publish.endpoint", config.publish.endpoint,
                        "publish.snapshot_endpoint", config.publish.snapshot_endpoint)
    if config.publish.curve_allowed_clients and not config.publish.curve_secret_key:
        raise ConfigError("publish.curve_allowed_clients", config.publish.curve_allowed_clients,
                          "needs publish.curve_secret_key (the daemon's own key) as well")
    check_crop_models_have_cells(config.segmentation.method,
                                 {slot: getattr(config.models, slot).path for slot in CROP_MODEL_NEEDS
                                  if getattr(config.models, slot).path})
    if config.channels.segment_on and config.segmentation.method == "none":
        raise ConfigError("channels.segment_on", config.channels.segment_on,
                          "names the channel to segment, but segmentation.method = 'none': set it to classical "
                          "or model")
    if config.segmentation.method == "cellpose" and not config.segmentation.cellpose.model:
        raise ConfigError("segmentation.cellpose.model", "",
                          "segmentation.method = 'cellpose' needs a model: an exported .onnx file or a built-in name")
    if config.segmentation.method == "cellpose" and config.segmentation.tta:
        raise ConfigError("segmentation.tta", True, "not available with segmentation.method = 'cellpose'")
    if config.segmentation.tta and config.segmentation.method == "model" and is_package(config.models.segmentation.path):
        raise ConfigError("segmentation.tta", True, "test-time augmentation is for wellwatch segmentation models; "
                                                    "models.segmentation.path is a BioImage.IO package: set tta = false")


def _check_inference(inference: InferenceConfig, max_batch: int) -> None:
    sizes = inference.batch_sizes
    if any(b < 1 or b > max_batch for b in sizes) or list(sizes) != sorted(set(sizes)):
        raise ConfigError("inference.batch_sizes", list(sizes),
                          f"strictly ascending batch sizes in 1..batching.max_batch ({max_batch}), or [] for "
                          "powers of two up to max_batch")
    if inference.device == "cpu":
        if inference.precision == "fp16":
            raise ConfigError("inference.precision", "fp16", "float16 models are for GPUs; with inference.device = "
                                                             "'cpu' use auto or fp32")
        if inference.tensorrt.enable:
            raise ConfigError("inference.tensorrt.enable", True, "TensorRT needs a GPU; inference.device is 'cpu'")
    if inference.tensorrt.enable and not inference.tensorrt.engine_cache_dir:
        raise ConfigError("inference.tensorrt.engine_cache_dir", "", "a folder for built engines is required "
                                                                      "(building one takes minutes)")


# Rules between the config and the models it serves: checked once the models are open (a model
# given in code, not by a path, is checked as well).

CROP_MODEL_NEEDS = {"cell_type": "cell types", "cell_live_dead": "per-cell live/dead calls"}


def check_crop_models_have_cells(method: str, paths: dict[str, str]) -> None:
    """Crop models (slot -> model path) classify segmented cells: segmentation.method must not be 'none'."""
    if method != "none":
        return
    for slot, path in paths.items():
        raise ConfigError(f"models.{slot}.path", path, f"{CROP_MODEL_NEEDS[slot]} need segmented cells: set "
                                                       "segmentation.method to classical or model")


def check_model_channels(label_free: tuple[str, ...], slot: str, path: str, contract) -> None:
    """A model that reads the label-free channels takes as many as channels.label_free names."""
    if len(label_free) != len(contract.channels):
        raise StartupError(f"channels.label_free {list(label_free)} gives {len(label_free)} channel(s) but the "
                           f"{slot} model {path} ({contract.name!r}) expects {len(contract.channels)} "
                           f"({', '.join(contract.channels)})")


def check_interval_level(level: float, *contracts) -> None:
    """intervals.level must be one the served models' calibrations measured."""
    for c in contracts:
        if c is not None and c.calibration is not None and not any(abs(level - x) < 1e-9 for x in c.calibration.levels):
            raise StartupError(f"intervals.level {level} is not calibrated in model {c.name!r}; its calibration "
                               f"measured levels {', '.join(f'{x:g}' for x in c.calibration.levels)}")
