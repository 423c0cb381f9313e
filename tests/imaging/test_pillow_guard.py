"""Tests for anon_tasks.imaging.pillow_guard: Pillow's process-wide switches, across threads."""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image, ImageFile

from anon_tasks.core.errors import ImageDecodeError, ImageTooLargeError
from tests.imaging.helpers import decode_awkward


def test_pillow_global_state_is_left_as_it_was(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1234)
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    filters_before = list(warnings.filters)
    # Pillow's limit of 1234 pixels would refuse hopper; truncated loading would pass the JPEG.
    assert decode_awkward("hopper.jpg").frames[0].shape == (128, 128, 3)
    with pytest.raises(ImageDecodeError):
        decode_awkward("truncated_jpeg.jpg")
    with pytest.raises(ImageTooLargeError):
        decode_awkward("decompression_bomb.gif")
    assert Image.MAX_IMAGE_PIXELS == 1234
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True
    assert list(warnings.filters) == filters_before


def test_concurrent_decodes_agree_with_serial_ones() -> None:
    names = ["hopper.jpg", "hopper.png", "iss634.webp", "camera_gray16.png", "hopper.gif"] * 4
    serial = [decode_awkward(name).frames[-1] for name in names]
    with ThreadPoolExecutor(max_workers=8) as pool:
        parallel = list(pool.map(lambda name: decode_awkward(name).frames[-1], names))
    for one, other in zip(serial, parallel, strict=True):
        np.testing.assert_array_equal(one, other)
    assert Image.MAX_IMAGE_PIXELS is not None
