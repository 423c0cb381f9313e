"""Face detections: one frozen value per face, in the upright original image's pixels."""

from __future__ import annotations

from collections.abc import Iterable

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Face", "faces_above", "near_misses"]

#: Order of the five CenterFace landmarks in ``Face.landmarks_xy``.
LANDMARK_NAMES: tuple[str, ...] = ("right_eye", "left_eye", "nose", "mouth_right", "mouth_left")


class Face(BaseModel):
    """One detected face.

    Coordinates are pixels of the upright image (after EXIF orientation), origin top-left,
    ``x2``/``y2`` exclusive, before any ``mask_scale`` enlargement.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    xyxy: tuple[float, float, float, float] = Field(description="Box as (x1, y1, x2, y2).")
    score: float = Field(ge=0.0, le=1.0, description="Detector confidence.")
    landmarks_xy: tuple[tuple[float, float], ...] = Field(
        default=(),
        description="Five (x, y) landmarks in LANDMARK_NAMES order; empty when unknown.",
    )
    frame: int = Field(default=0, ge=0, description="Frame index in a multi-frame file.")

    @property
    def width_px(self) -> float:
        return self.xyxy[2] - self.xyxy[0]

    @property
    def height_px(self) -> float:
        return self.xyxy[3] - self.xyxy[1]


def faces_above(faces: Iterable[Face], threshold: float) -> tuple[Face, ...]:
    """Keep the faces whose score is above ``threshold`` (the reference keeps ``score > t``)."""
    return tuple(face for face in faces if face.score > threshold)


def near_misses(candidates: Iterable[Face], threshold: float) -> tuple[Face, ...]:
    """The candidates ``faces_above`` leaves out: scored at or below ``threshold`` (and above
    the floor they were kept down to), highest score first."""
    missed = (face for face in candidates if face.score <= threshold)
    return tuple(sorted(missed, key=lambda face: face.score, reverse=True))
