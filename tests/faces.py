"""Where the faces are in the test photos, and whether an output hides them."""

from __future__ import annotations

import numpy as np

#: The astronaut's face in scikit-image's 512x512 photo (CenterFace's box, rounded out).
ASTRONAUT_FACE_XYXY = (182, 58, 270, 178)
#: The same face in the photo mirrored left to right.
MIRRORED_FACE_XYXY = (512 - 270, 58, 512 - 182, 178)


def region_changed(
    original: np.ndarray, output: np.ndarray, xyxy: tuple[int, int, int, int], *, at_least: float
) -> bool:
    """Whether the mean absolute difference inside the box's central half exceeds ``at_least``."""
    x1, y1, x2, y2 = xyxy
    dx, dy = (x2 - x1) // 4, (y2 - y1) // 4
    a = original[y1 + dy : y2 - dy, x1 + dx : x2 - dx].astype(np.float64)
    b = output[y1 + dy : y2 - dy, x1 + dx : x2 - dx].astype(np.float64)
    return float(np.abs(a - b).mean()) > at_least


def face_hidden(original: np.ndarray, output: np.ndarray, xyxy: tuple[int, int, int, int]) -> bool:
    """The face in ``xyxy`` was masked: its pixels moved far beyond any codec's loss."""
    return region_changed(original, output, xyxy, at_least=12.0)


def face_visible(original: np.ndarray, output: np.ndarray, xyxy: tuple[int, int, int, int]) -> bool:
    """The face in ``xyxy`` is as it was, within a lossy codec's error."""
    return not region_changed(original, output, xyxy, at_least=6.0)
