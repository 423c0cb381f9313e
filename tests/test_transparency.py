"""Faces as viewers show transparent images: searched over black and white pages, masked with
their alpha.

A face may live in the alpha channel alone (dark ink on a light page, light ink on a dark one)
or show through a soft cut-out after its colour is blurred. Every case: the source shows a face
a viewer sees, and the output, shown the same way, shows none.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from anon_tasks.core.settings import AnonymizeMethod, DetectionSettings, MaskSettings
from anon_tasks.imaging.decode import decode_image
from anon_tasks.imaging.decoded import detector_views
from anon_tasks.pipeline.anonymizer import Anonymizer

LUMA = (0.299, 0.587, 0.114)


@pytest.fixture(scope="module")
def anonymizer() -> Anonymizer:
    return Anonymizer(detection=DetectionSettings(device="cpu"))


def _luminance(rgb: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(rgb.astype(np.float64) @ np.array(LUMA)), 0, 255).astype(np.uint8)


def _transparent_face(rgb: np.ndarray, ink: str, layout: str) -> np.ndarray:
    """The photo carried by alpha alone (``dark``/``light`` ink) or a soft cut-out."""
    luma = _luminance(rgb)
    if ink == "dark":  # black paint, opaque where the photo is dark: a face on a light page
        colour, alpha = np.zeros_like(luma), 255 - luma
    elif ink == "light":  # white paint, opaque where the photo is bright: on a dark page
        colour, alpha = np.full_like(luma, 255), luma
    else:  # the photo itself, faded out where it is dark
        colour = rgb if layout == "RGBA" else luma
        alpha = np.clip(luma.astype(np.int32) + 40, 0, 255).astype(np.uint8)
        return np.dstack([colour, alpha]) if layout == "RGBA" else np.dstack([luma, alpha])
    if layout == "RGBA":
        return np.dstack([colour, colour, colour, alpha])
    return np.dstack([colour, alpha])


def _encoded(pixels: np.ndarray, fmt: str, depth: int) -> bytes:
    buffer = io.BytesIO()
    if depth == 16 and fmt == "PNG":
        import cv2

        wide = pixels.astype(np.uint16) * 257
        order = [2, 1, 0, 3] if wide.shape[2] == 4 else [0, 1]
        ok, data = cv2.imencode(".png", np.ascontiguousarray(wide[..., order]))
        assert ok
        return data.tobytes()
    mode = "RGBA" if pixels.shape[2] == 4 else "LA"
    image = Image.fromarray(pixels, mode)
    if fmt == "WEBP":
        image.save(buffer, format="WEBP", lossless=True)
    else:
        image.save(buffer, format=fmt)
    return buffer.getvalue()


def _faces_a_viewer_sees(anonymizer: Anonymizer, content: bytes) -> int:
    """Faces above the threshold in any way a viewer may show the file's first frame."""
    frame = decode_image(content).frames[0]
    found = 0
    for view in detector_views(frame):
        faces = anonymizer.detector.detect_quality(view)
        found = max(found, len(faces.above(anonymizer.detection.threshold)))
    return found


@settings(
    max_examples=14, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    ink=st.sampled_from(["dark", "light", "cutout"]),
    layout=st.sampled_from(["RGBA", "LA"]),
    fmt_depth=st.sampled_from([("PNG", 8), ("PNG", 16), ("WEBP", 8), ("TIFF", 8)]),
    method=st.sampled_from([AnonymizeMethod.BLUR, AnonymizeMethod.SOLID, AnonymizeMethod.MOSAIC]),
)
def test_a_face_shown_through_transparency_is_found_and_hidden(
    anonymizer, astronaut_rgb, ink, layout, fmt_depth, method
) -> None:
    fmt, depth = fmt_depth
    assume(not (depth == 16 and layout == "LA"))  # OpenCV writes 16-bit gray+alpha nowhere
    content = _encoded(_transparent_face(astronaut_rgb, ink, layout), fmt, depth)
    assert _faces_a_viewer_sees(anonymizer, content) >= 1  # the source shows a face
    masker = Anonymizer(detection=anonymizer.detection, masking=MaskSettings(method=method))
    result = masker.anonymize_bytes(content)
    assert result.faces, "the face in the transparency was not found"
    assert _faces_a_viewer_sees(anonymizer, result.content) == 0


def test_an_opaque_image_is_searched_once(astronaut_rgb) -> None:
    """Transparency costs extra passes only where it exists."""
    opaque = np.dstack([astronaut_rgb, np.full(astronaut_rgb.shape[:2], 255, np.uint8)])
    assert len(detector_views(opaque)) == 1
    assert len(detector_views(astronaut_rgb)) == 1
    assert len(detector_views(_transparent_face(astronaut_rgb, "dark", "RGBA"))) == 3
