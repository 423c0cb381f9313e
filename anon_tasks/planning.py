"""Which images a run must redo: those whose output is not already what this run would write.

An image is up to date when the previous manifest recorded it as written (or unchanged) under
the same render key, and its output in dest still has the fingerprint recorded then. Everything
the output depends on is in the render key, so nothing else needs checking, and nothing is read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from anon_tasks.manifest import unchanged_row
from anon_tasks.records import ImageRef, ImageStatus, ManifestRow

__all__ = ["up_to_date_rows"]


def up_to_date_rows(
    images: Iterable[ImageRef],
    previous: Mapping[str, ManifestRow],
    output_fingerprints: Mapping[str, str],
    key_for: Callable[[ImageRef], str],
) -> dict[str, ManifestRow]:
    """The ``unchanged`` rows of the images that need no work, by source path.

    Args:
        images: This run's images.
        previous: The previous manifest's rows by source path.
        output_fingerprints: Fingerprints of the files now in dest, by relative path.
        key_for: The render key this run would give an image.
    """
    rows: dict[str, ManifestRow] = {}
    for image in images:
        prior = previous.get(image.relative_path)
        if (
            prior is not None
            and prior.status in (ImageStatus.WRITTEN, ImageStatus.UNCHANGED)
            and prior.output is not None
            and prior.output_fingerprint is not None
            and output_fingerprints.get(prior.output) == prior.output_fingerprint
            and all(
                output_fingerprints.get(sidecar.relative_path) is not None
                for sidecar in image.sidecars
            )
            and prior.render_key == key_for(image)
        ):
            rows[image.relative_path] = unchanged_row(prior)
    return rows
