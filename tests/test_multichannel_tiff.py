"""A field's channels in one TIFF: names from OME-XML, ImageJ labels, or 1..C."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from wellwatch.core.errors import FrameReadError
from wellwatch.core.files.multichannel_tiff import decode_channels, pick_channels

pytestmark = pytest.mark.unit


def stack() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 4000, (2, 32, 40), dtype=np.uint16)


def test_ome_tiff_channel_names(tmp_path):
    path = tmp_path / "field.ome.tif"
    tifffile.imwrite(path, stack(), ome=True, metadata={"axes": "CYX", "Channel": {"Name": ["DIC", "PH"]}})
    planes = decode_channels(str(path), path.read_bytes())
    assert list(planes) == ["DIC", "PH"]
    ph, dic = pick_channels(str(path), planes, ("PH", "DIC"))
    np.testing.assert_array_equal(dic, stack()[0])
    np.testing.assert_array_equal(ph, stack()[1])


def test_imagej_labels_and_unnamed_pages(tmp_path):
    labelled = tmp_path / "ij.tif"
    tifffile.imwrite(labelled, stack(), imagej=True, metadata={"axes": "CYX", "Labels": ["BF", "GFP"]})
    assert list(decode_channels(str(labelled), labelled.read_bytes())) == ["BF", "GFP"]
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, stack())
    planes = decode_channels(str(plain), plain.read_bytes())
    assert list(planes) == ["1", "2"]
    with pytest.raises(FrameReadError, match=r"plain.tif: channel\(s\) \['DIC'\] not in the file; it has \['1', '2'\]"):
        pick_channels(str(plain), planes, ("DIC",))


def test_truncated_file_is_retryable(tmp_path):
    path = tmp_path / "t.tif"
    tifffile.imwrite(path, stack())
    with pytest.raises(FrameReadError) as e:
        decode_channels(str(path), path.read_bytes()[:500])
    assert e.value.retryable
