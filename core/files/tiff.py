"""Read one frame file with tifffile, with the checks that catch damaged or unexpected files.

What the header declares (pages, size, dtype, samples) is checked against `FrameLimits` before
any pixel is decoded: a few-kB "decompression bomb" declaring 60000 x 60000 pixels is refused
without allocating its 7 GB.
"""

from __future__ import annotations

import io
import itertools
import os
import sys
from dataclasses import dataclass, field

import numpy as np
import tifffile

from wellwatch.core.errors import FrameReadError
from wellwatch.core.validation import between

ACCEPTED_DTYPES = (np.uint8, np.uint16, np.float32)


@dataclass(frozen=True)
class FrameLimits:
    """Bounds a frame file must keep before it is decoded ([limits] in config.toml)."""
    max_pixels: int = field(default=8192 * 8192, metadata=between(64, 2**40))  # width x height of the page
    max_pages: int = field(default=1, metadata=between(1, 100000))  # pages (IFDs) parsed at most
    max_file_mb: float = field(default=1024.0, metadata=between(0.001, 1e7))  # bigger files are not read
    # memory a suspect file's isolated read may take (daemon/suspect_read.py); more: the file's fault
    read_memory_mb: float = field(default=4096.0, metadata=between(16.0, 1e7))


def check_file_size(path: str, size: int, limits: FrameLimits) -> None:
    """Refuse a file too big to be a frame before reading it (not retryable)."""
    if size > limits.max_file_mb * 1e6:
        raise FrameReadError(path, f"file is {size / 1e6:.0f} MB; limits.max_file_mb is {limits.max_file_mb:g}",
                             retryable=False)


def read_frame(path: str, limits: FrameLimits = FrameLimits()) -> np.ndarray:
    """Read and check a 2-D image file. Raise FrameReadError (retryable when a writer may still be busy)."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            data = f.read() if size <= limits.max_file_mb * 1e6 else None
    except FileNotFoundError:
        raise FrameReadError(path, "file vanished before it could be read", retryable=False) from None
    except PermissionError as e:
        raise FrameReadError(path, f"permission denied ({e.strerror})") from None
    except OSError as e:
        raise FrameReadError(path, f"cannot read ({e.strerror})") from None
    if data is None:
        check_file_size(path, size, limits)
    return decode_frame(path, data, limits)


def decode_frame(path: str, data: bytes, limits: FrameLimits = FrameLimits()) -> np.ndarray:
    """Parse a whole TIFF from bytes already read (the pipeline hashes the same bytes). An
    uncompressed contiguous page comes back as a read-only view of `data` (`contiguous_pixels`)."""
    if not data:
        raise FrameReadError(path, "file is empty (0 bytes)")
    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            # count pages lazily: a file with a million tiny pages is refused after max_pages + 1
            pages = sum(1 for _ in itertools.islice(tif.pages, limits.max_pages + 1))
            if pages == 0:
                raise FrameReadError(path, "TIFF has no pages")
            if pages > 1:
                many = f"more than {limits.max_pages}" if pages > limits.max_pages else str(pages)
                raise FrameReadError(path, f"TIFF has {many} pages; expected one plane per file "
                                           "(export z-stacks and channels as separate files)", retryable=False)
            page = tif.pages.first
            check_header(path, page.shape, page.dtype, limits)
            image = contiguous_pixels(page, data)
            if image is None:
                image = page.asarray()
    except FrameReadError:
        raise
    except Exception as e:  # tifffile raises many types (struct, zlib, ValueError...) on damaged input
        # A truncated or half-written TIFF lands here; waiting may let the writer finish.
        raise FrameReadError(path, f"not a readable TIFF ({type(e).__name__}: {e})") from None
    return check_frame(path, image)


def contiguous_pixels(page, data: bytes) -> np.ndarray | None:
    """An uncompressed page stored in one run, in native byte order, as a (read-only) view of the
    file's bytes: no decode copy. None when the layout needs tifffile's decoder (compressed, tiled,
    packed bits, another byte order, several samples, or a run that is not inside the bytes)."""
    dtype = np.dtype(page.dtype)
    if (not page.is_contiguous or page.compression != 1 or page.predictor != 1 or page.fillorder != 1
            or page.is_tiled or page.samplesperpixel != 1 or page.bitspersample != 8 * dtype.itemsize):
        return None
    if dtype.itemsize > 1 and page.parent.byteorder != ("<" if sys.byteorder == "little" else ">"):
        return None
    count = int(np.prod(page.shape))
    offset = int(page.dataoffsets[0])
    if offset + count * dtype.itemsize > len(data) or sum(page.databytecounts) < count * dtype.itemsize:
        return None
    return np.frombuffer(data, dtype, count=count, offset=offset).reshape(page.shape)


def check_header(path: str, shape: tuple[int, ...], dtype: np.dtype, limits: FrameLimits) -> None:
    """What a page declares, checked before decoding (none of these is retryable)."""
    rgb = len(shape) == 3 and shape[-1] in (3, 4) and dtype == np.uint8
    if len(shape) != 2 and not rgb:
        raise FrameReadError(path, f"expected a 2-D single-channel image, got shape {tuple(shape)}", retryable=False)
    if np.dtype(dtype) not in ACCEPTED_DTYPES:
        raise FrameReadError(path, f"unsupported dtype {dtype}; expected uint8, uint16 or float32", retryable=False)
    pixels = int(shape[0]) * int(shape[1])
    if pixels > limits.max_pixels:
        raise FrameReadError(path, f"declares {shape[1]} x {shape[0]} pixels ({pixels / 1e6:.0f} Mpx); "
                                   f"limits.max_pixels is {limits.max_pixels} ({limits.max_pixels / 1e6:.0f} Mpx)",
                             retryable=False)


def check_frame(path: str, image: np.ndarray) -> np.ndarray:
    if image.ndim == 3 and image.shape[-1] in (3, 4) and image.dtype == np.uint8:
        image = image[..., :3].mean(axis=-1).astype(np.float32)  # grey content stored as RGB
    if image.ndim != 2:
        raise FrameReadError(path, f"expected a 2-D single-channel image, got shape {image.shape}",
                             retryable=False)
    if image.dtype not in ACCEPTED_DTYPES:
        raise FrameReadError(path, f"unsupported dtype {image.dtype}; expected uint8, uint16 or float32",
                             retryable=False)
    if min(image.shape) < 8:
        raise FrameReadError(path, f"image {image.shape} is too small", retryable=False)
    if image.dtype == np.float32 and not np.isfinite(image).all():
        raise FrameReadError(path, "image contains NaN or infinity", retryable=False)
    return image
