"""Small frozen values that cross task boundaries: image references, detections, manifest rows.

None of them holds pixels. They are what Prefect persists as task results and what the run's
manifest is made of.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from anon_tasks.core.faces import Face

__all__ = [
    "ImageDetections",
    "ImageRef",
    "ImageStatus",
    "ManifestFace",
    "ManifestRow",
    "RunSummary",
    "ShardDetections",
    "SidecarRef",
    "SkippedEntry",
]


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SidecarRef(_Record):
    """A caption file beside an image (same stem), with its content fingerprint."""

    relative_path: str
    fingerprint: str


class ImageRef(_Record):
    """One source image: where it is, and a fingerprint that changes when its content does.

    The fingerprint is the size with the modification time (local files) or the ETag / version
    id (object stores), so a file changed in place is never mistaken for the old one.
    """

    relative_path: str = Field(description="POSIX path relative to the source root.")
    size_bytes: int = Field(ge=0)
    fingerprint: str = Field(description="Content fingerprint: size and mtime, or ETag.")
    sidecars: tuple[SidecarRef, ...] = ()


class ImageDetections(_Record):
    """Every face candidate above the score floor in one image, or why it could not be read.

    Stored per image and per shard in the result storage, so a rerun with another threshold
    (down to the floor), method or mask size never runs the model again.
    """

    image: ImageRef
    faces: tuple[Face, ...] = ()
    score_floor: float
    frame_count: int = 0
    error: str | None = None
    content_sha256: str | None = Field(
        default=None,
        description="SHA-256 of the exact bytes the faces were detected in; masking refuses "
        "bytes with another digest.",
    )


class ShardDetections(_Record):
    """Detections of one shard, and what producing them cost in this task run."""

    images: tuple[ImageDetections, ...]
    images_read: int = Field(default=0, description="Source images read by this task run.")
    images_inferred: int = Field(default=0, description="Images the model ran on.")
    device: str | None = Field(default=None, description="The device leased for inference.")
    backend: str | None = Field(
        default=None, description="The runtime the model ran on (an ONNX Runtime provider)."
    )
    record_key: str | None = Field(
        default=None,
        description="The key this shard's record is stored under in the result storage "
        "(manifest rows name it, so that a changed shard finds its images' candidates again).",
    )
    context_key: str | None = Field(
        default=None,
        description="Digest of everything besides the images that the candidates depend on "
        "(model, score floor, settings, version): another shard reuses them only under the "
        "same one.",
    )


class ImageStatus(StrEnum):
    """What a run did with one source image."""

    WRITTEN = "written"
    UNCHANGED = "unchanged"
    FAILED = "failed"
    #: Listed in the source but not processed (not an image, not a regular file, a bad name).
    SKIPPED = "skipped"
    #: Its source is gone (or failed): the output a previous run wrote was deleted.
    REMOVED = "removed"


class SkippedEntry(_Record):
    """An entry of the source that is not processed, and why (it becomes a ``skipped`` row)."""

    relative_path: str = Field(
        description="POSIX path relative to the source root; bytes that are not UTF-8 are "
        "shown as \\xNN escapes."
    )
    reason: str
    fingerprint: str = ""


class ManifestFace(_Record):
    """A masked face as the manifest records it."""

    box: tuple[float, float, float, float] = Field(description="x1, y1, x2, y2 in upright pixels.")
    score: float
    frame: int = 0
    landmarks: tuple[tuple[float, float], ...] = Field(
        default=(),
        description="Five (x, y) landmarks: right eye, left eye, nose, mouth right, mouth left.",
    )


class ManifestRow(_Record):
    """One line of ``_anonymize/manifest.jsonl``: the audit record of one source image."""

    source: str = Field(description="Path relative to the source root.")
    output: str | None = Field(description="Path relative to dest, or null when failed.")
    status: ImageStatus
    faces: tuple[ManifestFace, ...] = Field(
        default=(),
        description="Faces scoring strictly above the threshold (as the reference keeps them), "
        "before mask_scale.",
    )
    near_misses: tuple[ManifestFace, ...] = Field(
        default=(),
        description="Candidates scored above the stored score floor but not above the "
        "threshold: left unmasked, so the faces most likely to be leaks. A rerun with a lower "
        "threshold masks them without running the model.",
    )
    score_floor: float | None = Field(
        default=None,
        description="The score down to which faces and near misses together list every "
        "candidate the detector found (null in rows written before it was recorded).",
    )
    error: str | None = None
    source_fingerprint: str
    source_sha256: str | None = Field(
        default=None, description="SHA-256 of the source bytes the faces were detected in."
    )
    listed_at_ns: int | None = Field(
        default=None, description="When the run that read the source listed it (Unix ns)."
    )
    sidecars: dict[str, str] = Field(
        default_factory=dict,
        description="Caption sidecars written beside the output in dest, with their "
        "fingerprints then.",
    )
    refused_sidecars: tuple[str, ...] = Field(
        default=(), description="Sidecars not copied, each as 'path: reason'."
    )
    output_fingerprint: str | None = None
    render_key: str | None = Field(
        default=None, description="Digest of everything that determines the output bytes."
    )
    parameters: dict[str, object] = Field(default_factory=dict)
    detections_key: str | None = Field(
        default=None,
        description="Key of the stored detection record holding this image's face candidates "
        "(down to the score floor), in the run's result storage.",
    )
    model_sha256: str
    package_version: str


class RunSummary(_Record):
    """What one run of the flow did; also the flow's return value."""

    source: str
    dest: str
    images_total: int = 0
    images_written: int = 0
    images_unchanged: int = 0
    images_failed: int = 0
    images_skipped: int = Field(default=0, description="Source entries not processed.")
    images_removed: int = Field(
        default=0, description="Outputs deleted because their source is gone or failed."
    )
    images_inferred: int = Field(default=0, description="Images the model ran on in this run.")
    images_read: int = Field(default=0, description="Source images read in this run.")
    faces_found: int = 0
    shards: int = 0
    seconds: float = 0.0
    failed_images: tuple[str, ...] = ()
    manifest: str | None = None
    devices: tuple[str, ...] = Field(default=(), description="Devices the model ran on.")
    backends: tuple[str, ...] = Field(
        default=(), description="Runtimes the model ran on (ONNX Runtime providers, OpenVINO)."
    )
    partition: str | None = Field(default=None, description="'i/n' for one partition of a run.")
    review: str | None = Field(
        default=None, description="URL of the run's review page, when it wrote one."
    )
