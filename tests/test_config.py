"""config.toml -> Config: the documented file, and every kind of bad value named by its key."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from wellwatch.core.config import Config, load_config
from wellwatch.core.errors import ConfigError

pytestmark = pytest.mark.unit

REPO_CONFIG = Path(__file__).resolve().parents[1] / "config.toml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_documented_config_equals_the_defaults():
    config = load_config(REPO_CONFIG)
    default = Config()
    base = REPO_CONFIG.resolve().parent
    assert config.watch.root == str(base / default.watch.root)
    assert config.journal.path == str(base / default.journal.path)
    assert config.inference.tensorrt.engine_cache_dir == str(base / default.inference.tensorrt.engine_cache_dir)
    assert dataclasses.replace(config, watch=dataclasses.replace(config.watch, root=default.watch.root),
                               journal=default.journal, inference=default.inference) == default
    trt = dataclasses.replace(config.inference.tensorrt, engine_cache_dir=default.inference.tensorrt.engine_cache_dir)
    assert dataclasses.replace(config.inference, tensorrt=trt) == default.inference


def test_no_file_gives_defaults_with_paths_relative_to_the_working_folder():
    config = load_config(None)
    assert config.watch.root == str(Path.cwd() / Config().watch.root)
    assert config.journal.path == str(Path.cwd() / Config().journal.path)
    assert config.inference.tensorrt.engine_cache_dir == str(Path.cwd() / Config().inference.tensorrt.engine_cache_dir)
    assert dataclasses.replace(config, watch=Config().watch, journal=Config().journal,
                               inference=Config().inference) == Config()


@pytest.mark.parametrize("text, key, why", [
    ("[watch]\nsettle_pols = 2\n", "watch.settle_pols", "unknown key"),
    ("[wach]\nroot = 'x'\n", "wach", "unknown key"),
    ("[models.live_dead]\npth = 'm.onnx'\n", "models.live_dead.pth", "unknown key"),
    ("[watch]\nsettle_polls = '2'\n", "watch.settle_polls", "expected an integer"),
    ("[watch]\nsettle_polls = 2.5\n", "watch.settle_polls", "expected an integer"),
    ("[watch]\nrecursive = 1\n", "watch.recursive", "expected true or false"),
    ("[batching]\nmax_delay_ms = true\n", "batching.max_delay_ms", "expected a number"),
    ("[channels]\nlabel_free = []\n", "channels.label_free", "non-empty"),
    ("[watch]\nroot = 5\n", "watch.root", "expected a string"),
    ("[batching]\nmax_batch = 0\n", "batching.max_batch", "allowed range"),
    ("[metrics]\nport = 70000\n", "metrics.port", "allowed range"),
    ("[watch]\nsettle_s = -0.1\n", "watch.settle_s", "allowed range"),
    ("[pipeline]\nprepare_workers = -1\n", "pipeline.prepare_workers", "allowed range"),
    ("[inference]\nspin_wait = 1\n", "inference.spin_wait", "expected true or false"),
    ("[plate]\nformat = 100\n", "plate.format", "allowed: 6, 12, 24, 48, 96, 384, 1536"),
    ("[watch]\nobserver = 'inotify'\n", "watch.observer", "allowed: native, polling"),
    ("[watch]\ncompleteness = 'eager'\n", "watch.completeness", "allowed: structure, settle"),
    ("[inference]\ndevice = 'gpu'\n", "inference.device", "allowed"),
    ("watch = 3\n", "watch", "expected a table"),
    ("[watch]\nnaming = 'regex'\n", "watch.pattern", "required"),
    ("[watch]\npattern = '(?P<well>.*)'\n", "watch.pattern", "only used with"),
    ("[watch]\nnaming = 'regex'\npattern = '(?P<bogus>.*)'\n", "watch.pattern", "unknown named groups"),
    ("[inference]\ndevice = 'cpu'\nrequire_gpu = true\n", "inference.require_gpu", "cannot require"),
    ("[publish]\nendpoint = '127.0.0.1:5556'\n", "publish.endpoint", "ZeroMQ endpoint"),
    ("[publish]\nsnapshot_endpoint = 'tcp://127.0.0.1:5556'\n", "publish.snapshot_endpoint", "must differ"),
])
def test_bad_values_name_the_dotted_key(tmp_path, text, key, why):
    with pytest.raises(ConfigError, match=why) as e:
        load_config(write(tmp_path, text))
    assert e.value.key == key and repr(key) in str(e.value)


def test_overrides_are_validated_like_the_file(tmp_path):
    assert load_config(None, {"batching.max_batch": 64}).batching.max_batch == 64
    with pytest.raises(ConfigError) as e:
        load_config(None, {"batching.max_batch": -1})
    assert e.value.key == "batching.max_batch"


def test_toml_syntax_error_names_the_file(tmp_path):
    path = write(tmp_path, "[watch]\nroot = 'unterminated\n")
    with pytest.raises(ConfigError, match="not valid TOML") as e:
        load_config(path)
    assert str(path) in str(e.value)


def test_missing_file_names_the_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist") as e:
        load_config(tmp_path / "nope.toml")
    assert "nope.toml" in str(e.value)


def test_relative_paths_resolve_against_the_config_folder(tmp_path, monkeypatch):
    sub = tmp_path / "cfg"
    sub.mkdir()
    monkeypatch.chdir(tmp_path)  # somewhere else than the config's folder
    config = load_config(write(sub, "[watch]\nroot = '../acq/data'\n[journal]\npath = 'j.sqlite'\n"
                                    "[models.live_dead]\npath = 'models/m.onnx'\n"))
    assert config.watch.root == str(tmp_path / "acq" / "data")
    assert config.journal.path == str(sub / "j.sqlite")
    assert config.models.live_dead.path == str(sub / "models" / "m.onnx")
    assert config.plate_name == "acq"


def test_absolute_paths_and_scalar_coercions(tmp_path):
    config = load_config(write(tmp_path, f"[watch]\nroot = '{tmp_path / 'x'}'\nsettle_s = 1\n"
                                         "[channels]\nlabel_free = 'PH'\n"))
    assert config.watch.root == str(tmp_path / "x")
    assert config.watch.settle_s == 1.0 and isinstance(config.watch.settle_s, float)
    assert config.channels.label_free == ("PH",)


def test_default_paths_resolve_against_the_config_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(Path(__file__).resolve().parent)
    config = load_config(write(tmp_path, "[plate]\nformat = 384\n"))
    assert config.journal.path == str(tmp_path / "wellwatch-journal.sqlite")


def test_default_well_outside_plate_is_refused(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, "[plate]\nformat = 96\ndefault_well = 'Z99'\n"))
    assert e.value.key == "plate.default_well"


@pytest.mark.parametrize("kind", ["not utf-8", "a folder"])
def test_unreadable_config_file_is_a_config_error(tmp_path, kind):
    path = tmp_path / "config.toml"
    if kind == "a folder":
        path.mkdir()
    else:
        path.write_bytes(b"[watch]\nroot = '\xff\xfe'\n")
    with pytest.raises(ConfigError, match="--config"):
        load_config(path)


@pytest.mark.parametrize("table, limit", [("segmentation.classical", 900), ("segmentation.package", 20)])
def test_min_area_above_max_area_is_one_rule_for_both_segmentation_tables(table, limit):
    with pytest.raises(ConfigError) as e:
        load_config(None, {f"{table}.min_area": limit + 1, f"{table}.max_area": limit})
    assert e.value.key == f"{table}.min_area" and e.value.value == limit + 1
    assert e.value.allowed.startswith(f"allowed: at most {table}.max_area ({limit})")


def test_package_max_area_zero_is_no_limit():
    assert load_config(None, {"segmentation.package.min_area": 10**6}).segmentation.package.max_area == 0
