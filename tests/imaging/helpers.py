"""Helpers the imaging tests share: the awkward corpus, round trips and pixel differences."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from anon_tasks.core.settings import OutputSettings
from anon_tasks.imaging.decode import decode_image
from anon_tasks.imaging.decoded import DecodedImage
from anon_tasks.imaging.encode import encode_image
from tests.conftest import shared_path

DEFAULT = OutputSettings()
KEEP = OutputSettings(keep_metadata=True)
U8, U16 = np.dtype(np.uint8), np.dtype(np.uint16)

TAG_MAKE, TAG_MODEL, TAG_ORIENTATION = 0x010F, 0x0110, 0x0112
TAG_EXIF_IFD, TAG_GPS_IFD, TAG_DATETIME_ORIGINAL = 0x8769, 0x8825, 0x9003

#: Mean absolute difference allowed after re-encoding a lossy format at quality 95.
LOSSY_MEAN_ABS_DIFF = 4.0


def read_awkward(name: str) -> bytes:
    return shared_path("awkward", name).read_bytes()


def decode_awkward(name: str, **kwargs: int) -> DecodedImage:
    return decode_image(read_awkward(name), source=name, **kwargs)


def round_trip(image: DecodedImage, output: OutputSettings = DEFAULT) -> DecodedImage:
    return decode_image(encode_image(image, settings=output, source="test"), source="output")


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return 10 * np.log10(255.0**2 / mse)


def pil_bytes(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def opened(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


def still(frame: np.ndarray, fmt: str, **fields: object) -> DecodedImage:
    return DecodedImage(frames=(frame,), format=fmt, **fields)
