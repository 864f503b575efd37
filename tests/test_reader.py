"""read_frame on real TIFF files: good ones, damaged ones, unexpected ones."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import tifffile

from wellwatch.core.errors import FrameReadError
from wellwatch.core.files.tiff import read_frame

pytestmark = pytest.mark.unit

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def gradient(shape=(64, 80), dtype=np.uint16) -> np.ndarray:
    return (np.arange(np.prod(shape)) % 4000).reshape(shape).astype(dtype)


def tiff_bytes(tmp_path: Path, image: np.ndarray, **kw) -> bytes:
    path = tmp_path / "full.tif"
    tifffile.imwrite(path, image, **kw)
    return path.read_bytes()


def test_reads_uint16(tmp_path):
    image = gradient()
    tifffile.imwrite(tmp_path / "a.tif", image)
    out = read_frame(str(tmp_path / "a.tif"))
    assert out.dtype == np.uint16 and out.shape == (64, 80)
    np.testing.assert_array_equal(out, image)


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_reads_other_accepted_dtypes(tmp_path, dtype):
    tifffile.imwrite(tmp_path / "a.tif", gradient(dtype=dtype) % 200)
    assert read_frame(str(tmp_path / "a.tif")).dtype == dtype


def test_grey_rgb_uint8_becomes_2d(tmp_path):
    grey = gradient(dtype=np.uint8) % 200
    tifffile.imwrite(tmp_path / "rgb.tif", np.stack([grey] * 3, axis=-1), photometric="rgb")
    out = read_frame(str(tmp_path / "rgb.tif"))
    assert out.shape == grey.shape
    np.testing.assert_allclose(out, grey)


@pytest.mark.parametrize("fraction", [0.02, 0.1, 0.5, 0.9, 0.999])
def test_truncated_file_is_a_retryable_read_error(tmp_path, fraction):
    data = tiff_bytes(tmp_path, gradient())
    path = tmp_path / "cut.tif"
    path.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(FrameReadError) as e:
        read_frame(str(path))
    assert e.value.path == str(path) and str(path) in str(e.value) and e.value.retryable


@pytest.mark.parametrize("length", [2, 4, 7])
def test_header_truncated_file_is_a_read_error(tmp_path, length):
    path = tmp_path / "cut.tif"
    path.write_bytes(tiff_bytes(tmp_path, gradient())[:length])
    with pytest.raises(FrameReadError):
        read_frame(str(path))


@pytest.mark.parametrize("fraction", [0.3, 0.95])
def test_truncated_compressed_file_is_a_read_error(tmp_path, fraction):
    noise = np.random.default_rng(0).integers(0, 4000, (128, 128)).astype(np.uint16)
    data = tiff_bytes(tmp_path, noise, compression="zlib")
    path = tmp_path / "cut.tif"
    path.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(FrameReadError):
        read_frame(str(path))


def test_zero_length_file(tmp_path):
    path = tmp_path / "empty.tif"
    path.write_bytes(b"")
    with pytest.raises(FrameReadError) as e:
        read_frame(str(path))
    assert str(path) in str(e.value)


def test_not_a_tiff(tmp_path):
    path = tmp_path / "notes.tif"
    path.write_bytes(b"%PDF-1.4 this is not an image at all\n" * 50)
    with pytest.raises(FrameReadError, match="not a readable TIFF") as e:
        read_frame(str(path))
    assert e.value.path == str(path)


def test_vanished_file_is_not_retryable(tmp_path):
    with pytest.raises(FrameReadError, match="vanished") as e:
        read_frame(str(tmp_path / "gone.tif"))
    assert not e.value.retryable


@pytest.mark.parametrize("dtype", [np.float64, np.int32, np.int16])
def test_unsupported_dtype_is_not_retryable(tmp_path, dtype):
    path = tmp_path / "odd.tif"
    tifffile.imwrite(path, gradient(dtype=dtype))
    with pytest.raises(FrameReadError, match="unsupported dtype") as e:
        read_frame(str(path))
    assert not e.value.retryable and str(path) in str(e.value)


def test_single_page_with_several_samples_is_not_retryable(tmp_path):
    path = tmp_path / "samples.tif"
    tifffile.imwrite(path, np.zeros((64, 64, 5), np.uint16), photometric="minisblack", planarconfig="contig")
    with pytest.raises(FrameReadError, match="2-D") as e:
        read_frame(str(path))
    assert not e.value.retryable


def test_multi_page_stack_is_not_retryable(tmp_path):
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, np.zeros((5, 64, 64), np.uint16))
    with pytest.raises(FrameReadError) as e:
        read_frame(str(path))
    assert not e.value.retryable


def test_tiny_image_is_refused(tmp_path):
    tifffile.imwrite(tmp_path / "tiny.tif", np.zeros((4, 100), np.uint16))
    with pytest.raises(FrameReadError, match="too small"):
        read_frame(str(tmp_path / "tiny.tif"))


def test_real_usiigaci_phase_frame():
    path = DATA / "usiigaci-phase" / "set1" / "raw.tif"
    if not path.exists():
        pytest.skip(f"shared data {path} not present")
    image = read_frame(str(path))
    assert image.ndim == 2 and image.dtype == np.uint16 and image.shape == (1022, 1024)
    assert image.std() > 0


def test_real_vendor_and_nis_files_read_as_2d():
    folders = [DATA / "vendor-files", DATA / "nis-timelapse"]
    if not all(f.is_dir() for f in folders):
        pytest.skip("shared data not present")
    for path in sorted(p for f in folders for p in f.glob("*.tif")):
        image = read_frame(str(path))
        assert image.ndim == 2 and min(image.shape) >= 8, path.name


@pytest.mark.parametrize("kwargs", [
    {},                                         # uint16, one strip, little endian: a view, no decode copy
    {"rowsperstrip": 7},                        # many strips, still one contiguous run
    {"dtype": np.uint8}, {"dtype": np.float32},
    {"byteorder": ">"},                         # big endian: decoded by tifffile
    {"compression": "zlib"},                    # compressed: decoded by tifffile
    {"tile": (32, 32)},                         # tiled: decoded by tifffile
])
def test_decoded_pixels_are_the_same_whether_viewed_in_place_or_decoded(kwargs, tmp_path):
    from wellwatch.core.files.tiff import contiguous_pixels, decode_frame

    kwargs = dict(kwargs)
    dtype = kwargs.pop("dtype", np.uint16)
    image = (np.random.default_rng(3).gamma(3, 40, size=(70, 96))).astype(dtype)
    buf = io.BytesIO()
    tifffile.imwrite(buf, image, **kwargs)
    data = buf.getvalue()
    decoded = decode_frame("x.tif", data)
    np.testing.assert_array_equal(decoded, image)
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        view = contiguous_pixels(tif.pages.first, data)
    in_place = not kwargs.get("compression") and not kwargs.get("tile") and kwargs.get("byteorder") != ">"
    assert (view is not None) == in_place
    if in_place:
        assert not decoded.flags.writeable and np.shares_memory(decoded, np.frombuffer(data, np.uint8))
