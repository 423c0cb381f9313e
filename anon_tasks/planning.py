"""Which images a run must redo: those whose output is not already what this run would write.

An image is up to date when the previous manifest recorded it as written (or unchanged) under
the same render key, and its output in dest still has the fingerprint recorded then. Everything
the output depends on is in the render key, so nothing else needs checking, and nothing is read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from anon_tasks.manifest import unchanged_row
from anon_tasks.records import ImageRef, ImageStatus, ManifestRow

__all__ = ["is_up_to_date", "up_to_date_rows"]


def is_up_to_date(
    image: ImageRef,
    prior: ManifestRow | None,
    key: str,
    fingerprint_of: Callable[[str], str | None],
) -> bool:
    """Whether ``image``'s output in dest is already what a run with render ``key`` would write.

    Args:
        image: The source image.
        prior: Its row in the previous manifest, if any.
        key: The render key this run would give it.
        fingerprint_of: The current fingerprint of a file in dest by relative path (None when
            it is missing).
    """
    return (
        prior is not None
        and prior.status in (ImageStatus.WRITTEN, ImageStatus.UNCHANGED)
        and prior.render_key == key
        and prior.output is not None
        and prior.output_fingerprint is not None
        and fingerprint_of(prior.output) == prior.output_fingerprint
        and all(fingerprint_of(sidecar.relative_path) is not None for sidecar in image.sidecars)
    )


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
    return {
        image.relative_path: unchanged_row(previous[image.relative_path])
        for image in images
        if is_up_to_date(
            image, previous.get(image.relative_path), key_for(image), output_fingerprints.get
        )
    }
