"""One implementation each: resampling and area filters, the settings validator, progress lines."""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
import pytest

from wellwatch.core.errors import ConfigError
from wellwatch.core.segmentation.downsample import block_mean, filter_by_area, upsample_labels
from wellwatch.core.validation import between, build, check_fields, choice
from wellwatch.training.progress import Progress

pytestmark = pytest.mark.unit


def test_block_mean_drops_or_pads_the_odd_edge():
    x = np.arange(15, dtype=np.uint16).reshape(3, 5)
    assert block_mean(x, 2, "drop").tolist() == [[3.0, 5.0]]
    assert block_mean(x, 2, "pad").tolist() == [[3.0, 5.0, 6.5], [10.5, 12.5, 14.0]]
    assert block_mean(x, 1).dtype == np.float32
    with pytest.raises(ValueError, match="odd_edge"):
        block_mean(x, 2, "wrap")


def test_upsample_labels_fits_the_frame_both_ways():
    small = np.array([[1, 2]], np.int32)
    assert upsample_labels(small, 2, (3, 5)).tolist() == [[1, 1, 2, 2, 2]] * 3  # a dropped edge repeats
    assert upsample_labels(small, 2, (1, 3)).tolist() == [[1, 1, 2]]             # a padded edge is cut


def test_filter_by_area_counts_pixels_or_weights():
    labels = np.array([[1, 1, 2, 3, 3, 3]], np.int32)
    assert filter_by_area(labels, 2).tolist() == [[1, 1, 0, 2, 2, 2]]
    assert filter_by_area(labels, 2, 2).tolist() == [[1, 1, 0, 0, 0, 0]]
    weights = np.array([1, 1, 4, 1, 1, 1], np.float64)
    assert filter_by_area(labels, 3, 0, weights).tolist() == [[0, 0, 1, 2, 2, 2]]


@dataclass(frozen=True)
class Knobs:
    mode: str = field(default="a", metadata=choice("a", "b"))
    size: int = field(default=3, metadata=between(1, 9))
    gain: float = field(default=1.0, metadata=between(0.0, None))


def test_one_validator_for_tables_and_built_objects():
    assert build(Knobs, {"size": 4, "gain": 2}, "k.") == Knobs("a", 4, 2.0)
    check_fields(Knobs(size=np.int64(5), gain=np.float32(0.5)), "k.")  # numpy scalars from code are fine
    for bad, key, allowed in [(Knobs(mode="c"), "k.mode", "allowed: a, b"), (Knobs(size=10), "k.size", "1..9"),
                              (Knobs(size=2.0), "k.size", "integer"), (Knobs(gain=float("nan")), "k.gain", "finite")]:
        with pytest.raises(ConfigError) as e:
            check_fields(bad, "k.")
        assert e.value.key == key and allowed in e.value.allowed
    with pytest.raises(ConfigError, match="unknown key"):
        build(Knobs, {"sizes": 1}, "k.")


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_rewrites_on_a_terminal_and_throttles_elsewhere():
    tty = _Tty()
    p = Progress("job", stream=tty)
    p.update("1/3")
    p.update("2/3")
    p.line("done")
    assert tty.getvalue() == "\r[job] 1/3\x1b[K\r[job] 2/3\x1b[K\r[job] done\x1b[K\n"
    log = io.StringIO()
    p = Progress("job", stream=log, every_s=3600)
    p.update("1/3")
    p.update("2/3")  # within every_s: not printed
    p.line("done")
    assert log.getvalue() == "[job] 1/3\n[job] done\n"
