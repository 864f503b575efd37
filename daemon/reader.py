"""Read one frame file with tifffile, with the checks that catch damaged or unexpected files."""

from __future__ import annotations

import io

import numpy as np
import tifffile

from .errors import FrameReadError

ACCEPTED_DTYPES = (np.uint8, np.uint16, np.float32)


def read_frame(path: str) -> np.ndarray:
    """Read and check a 2-D image file. Raise FrameReadError (retryable when a writer may still be busy)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise FrameReadError(path, "file vanished before it could be read", retryable=False) from None
    except PermissionError as e:
        raise FrameReadError(path, f"permission denied ({e.strerror})") from None
    except OSError as e:
        raise FrameReadError(path, f"cannot read ({e.strerror})") from None
    return decode_frame(path, data)


def decode_frame(path: str, data: bytes) -> np.ndarray:
    """Parse a whole TIFF from bytes already read (the pipeline hashes the same bytes)."""
    if not data:
        raise FrameReadError(path, "file is empty (0 bytes)")
    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            pages = len(tif.pages)
            if pages == 0:
                raise FrameReadError(path, "TIFF has no pages")
            if pages > 1:
                raise FrameReadError(path, f"TIFF has {pages} pages; expected one plane per file "
                                           "(export z-stacks and channels as separate files)", retryable=False)
            image = tif.pages.first.asarray()
    except FrameReadError:
        raise
    except Exception as e:  # tifffile raises many types (struct, zlib, ValueError...) on damaged input
        # A truncated or half-written TIFF lands here; waiting may let the writer finish.
        raise FrameReadError(path, f"not a readable TIFF ({type(e).__name__}: {e})") from None
    return check_frame(path, image)


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
