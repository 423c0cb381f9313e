"""Manifest rows for review tests, and hypothesis strategies of them."""

from __future__ import annotations

from hypothesis import strategies as st

from anon_tasks.core.records import ImageStatus, ManifestFace, ManifestRow

FLOOR, THRESHOLD = 0.1, 0.4


def row(
    output: str,
    *,
    faces: tuple[float, ...] = (),
    misses: tuple[float, ...] = (),
    status: ImageStatus = ImageStatus.WRITTEN,
    box: tuple[float, float, float, float] = (10.0, 10.0, 30.0, 34.0),
    miss_box: tuple[float, float, float, float] = (40.0, 8.0, 52.0, 22.0),
) -> ManifestRow:
    """A row of ``output`` with faces and near misses of the given scores."""
    return ManifestRow(
        source=output,
        output=None if status in (ImageStatus.FAILED, ImageStatus.SKIPPED) else output,
        status=status,
        faces=tuple(ManifestFace(box=box, score=score) for score in faces),
        near_misses=tuple(ManifestFace(box=miss_box, score=score) for score in misses),
        source_fingerprint="f",
        output_fingerprint="o",
        model_sha256="0" * 64,
        package_version="test",
    )


_scores_above = st.floats(THRESHOLD, 1.0, exclude_min=True)
_scores_between = st.floats(FLOOR, THRESHOLD, exclude_min=True)


@st.composite
def rows(draw: st.DrawFn, max_size: int = 40) -> list[ManifestRow]:
    """Rows of distinct outputs with any mix of statuses, faces and near misses."""
    names = draw(st.lists(st.text(min_size=1, max_size=12), max_size=max_size, unique=True))
    made = []
    for name in names:
        made.append(
            row(
                f"{name}.png",
                faces=tuple(draw(st.lists(_scores_above, max_size=3))),
                misses=tuple(draw(st.lists(_scores_between, max_size=4))),
                status=draw(st.sampled_from(list(ImageStatus))),
            )
        )
    return made
