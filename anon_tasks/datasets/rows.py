"""Manifest rows: the audit record of what happened to each source entry in a run.

One function per outcome (written, failed, skipped, removed), each filling the fields every row
shares (source, fingerprints, parameters, model, version) from the run's ``RenderSpec``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from anon_tasks.core.faces import Face
from anon_tasks.core.records import ImageRef, ImageStatus, ManifestFace, ManifestRow, SkippedEntry
from anon_tasks.core.version import __version__
from anon_tasks.datasets.keys import RenderSpec
from anon_tasks.datasets.manifest import manifest_parameters

__all__ = ["failed_row", "manifest_faces", "removed_row", "skipped_row", "written_row"]


def manifest_faces(faces: Iterable[Face]) -> tuple[ManifestFace, ...]:
    """Faces as the manifest records them: boxes to 0.01 px, scores to 1e-4."""
    return tuple(
        ManifestFace(
            box=tuple(round(v, 2) for v in face.xyxy),  # type: ignore[arg-type]
            score=round(face.score, 4),
            frame=face.frame,
            landmarks=tuple((round(x, 1), round(y, 1)) for x, y in face.landmarks_xy),
        )
        for face in faces
    )


def _shared(
    image: ImageRef, render: RenderSpec, content_sha256: str | None, render_key: str | None
) -> dict[str, object]:
    return {
        "source": image.relative_path,
        "source_fingerprint": image.fingerprint,
        "source_sha256": content_sha256,
        "parameters": manifest_parameters(render.detection, render.masking),
        "model_sha256": render.model_sha256,
        "package_version": __version__,
        "render_key": render_key,
    }


def written_row(
    image: ImageRef,
    render: RenderSpec,
    *,
    faces: Iterable[Face],
    near_misses: Iterable[Face] = (),
    content_sha256: str | None,
    render_key: str,
    score_floor: float | None,
    output_fingerprint: str | None,
    sidecars: Mapping[str, str | None],
    refused_sidecars: tuple[str, ...] = (),
) -> ManifestRow:
    """The row of an image whose masked output (and sidecars) were just written to dest.

    ``render_key`` is ``render.key(image)``, as the mask task computed it; ``score_floor`` the
    score down to which ``faces`` and ``near_misses`` hold every candidate (None when unknown:
    the next run then renders the image again at any threshold).
    """
    return ManifestRow(
        output=image.relative_path,
        status=ImageStatus.WRITTEN,
        faces=manifest_faces(faces),
        near_misses=manifest_faces(near_misses),
        score_floor=score_floor,
        output_fingerprint=output_fingerprint,
        sidecars={relative: fingerprint or "" for relative, fingerprint in sidecars.items()},
        refused_sidecars=refused_sidecars,
        **_shared(image, render, content_sha256, render_key),  # type: ignore[arg-type]
    )


def failed_row(
    image: ImageRef,
    render: RenderSpec,
    error: str | None,
    *,
    content_sha256: str | None = None,
    render_key: str | None = None,
) -> ManifestRow:
    """The row of an image with no output: why, and what was known of it."""
    return ManifestRow(
        output=None,
        status=ImageStatus.FAILED,
        error=error,
        **_shared(image, render, content_sha256, render_key),  # type: ignore[arg-type]
    )


def skipped_row(entry: SkippedEntry, render: RenderSpec) -> ManifestRow:
    """The row of a source entry the run does not process, with the reason."""
    return ManifestRow(
        source=entry.relative_path,
        output=None,
        status=ImageStatus.SKIPPED,
        error=entry.reason,
        source_fingerprint=entry.fingerprint,
        parameters=manifest_parameters(render.detection, render.masking),
        model_sha256=render.model_sha256,
        package_version=__version__,
    )


def removed_row(last: ManifestRow, deleted: Iterable[str]) -> ManifestRow:
    """The row of an image gone from the source, whose outputs were deleted from dest."""
    return last.model_copy(
        update={
            "status": ImageStatus.REMOVED,
            "output": None,
            "output_fingerprint": None,
            "sidecars": {},
            "faces": (),
            "near_misses": (),
            "error": "its source is gone: " + ", ".join(deleted) + " deleted from dest",
        }
    )
