"""The library facade: decode, detect, mask and encode one image, with no Prefect involved.

A small front over the pieces the Prefect tasks use too (``pipeline.finding`` for the faces,
``imaging`` for pixels, ``storage`` for files). The threshold is applied here, once, to the
detector's candidates.

Fail closed: an image is encoded only after every frame has been searched and masked, and a file
is written only once its bytes exist in full. Any error leaves no output behind.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from anon_tasks.core.errors import ConfigurationError
from anon_tasks.core.faces import Face, faces_above
from anon_tasks.core.formats import format_for_name
from anon_tasks.core.settings import (
    AnonymizeMethod,
    DetectionSettings,
    MaskSettings,
    OutputSettings,
)
from anon_tasks.detection.detector import CenterFaceDetector
from anon_tasks.imaging.decode import decode_image
from anon_tasks.imaging.decoded import DecodedImage
from anon_tasks.imaging.encode import encode_image
from anon_tasks.imaging.masking import mask_image
from anon_tasks.pipeline.finding import find_faces
from anon_tasks.storage.locations import location_within
from anon_tasks.storage.reads import read_bytes
from anon_tasks.storage.writes import write_bytes_atomic

__all__ = ["AnonymizedImage", "Anonymizer"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AnonymizedImage:
    """An encoded anonymised image and the faces that were masked in it.

    Attributes:
        content: The encoded file, in the source's format.
        faces: Faces above the threshold, in upright source pixels, before ``mask_scale``.
        format: The Pillow format name (``JPEG``, ``PNG``...).
        frame_count: Frames searched and masked (2 for an MPO stereo pair, N for an animation).
    """

    content: bytes
    faces: tuple[Face, ...]
    format: str
    frame_count: int

    def __repr__(self) -> str:
        return (
            f"AnonymizedImage(format={self.format!r}, bytes={len(self.content)}, "
            f"faces={len(self.faces)}, frames={self.frame_count})"
        )


class Anonymizer:
    """Anonymises faces in images with one set of settings.

    The detector session is built once per process and device and shared by every instance.

    Example:
        >>> anonymizer = Anonymizer(masking=MaskSettings(method=AnonymizeMethod.MOSAIC))
        >>> result = anonymizer.anonymize_file("photos/a.jpg", "out/a.jpg")
        >>> len(result.faces)
        1
    """

    def __init__(
        self,
        detection: DetectionSettings | None = None,
        masking: MaskSettings | None = None,
        output: OutputSettings | None = None,
    ) -> None:
        self.detection = detection or DetectionSettings()
        self.masking = masking or MaskSettings()
        self.output = output or OutputSettings()
        self.detector = CenterFaceDetector(self.detection)

    def decode(self, content: bytes, *, source: str = "<bytes>") -> DecodedImage:
        """Decode upright frames, refusing images above the pixel limit."""
        return decode_image(content, source=source, max_pixels=self.output.max_pixels)

    def detect(self, image: DecodedImage) -> tuple[Face, ...]:
        """Faces above the threshold in every frame of ``image`` (the quality's passes)."""
        return faces_above(find_faces(self.detector, image), self.detection.threshold)

    def mask(self, image: DecodedImage, faces: tuple[Face, ...]) -> DecodedImage:
        """Mask ``faces`` in their frames; returns new pixels with the same metadata."""
        return mask_image(image, faces, self.masking)

    def encode(self, image: DecodedImage, *, source: str = "<bytes>") -> bytes:
        """Encode (masked) frames in the source's format with the output settings."""
        return encode_image(image, settings=self.output, source=source)

    def anonymize_bytes(self, content: bytes, *, source: str = "<bytes>") -> AnonymizedImage:
        """Decode, detect, mask and encode one image held in memory.

        Raises:
            ImageError: The image cannot be decoded, is too large, or cannot be written back in
                its format. Nothing is returned for it.
        """
        image = self.decode(content, source=source)
        faces = self.detect(image)
        encoded = self.encode(self.mask(image, faces), source=source)
        logger.debug("%s: %d face(s) in %d frame(s)", source, len(faces), len(image.frames))
        return AnonymizedImage(
            content=encoded, faces=faces, format=image.format, frame_count=len(image.frames)
        )

    def find_faces_in_file(self, source_url: str) -> tuple[Face, ...]:
        """The faces above the threshold in the file at ``source_url`` (detection only)."""
        image = self.decode(read_bytes(source_url), source=source_url)
        return self.detect(image)

    def anonymize_file(self, source_url: str, dest_url: str) -> AnonymizedImage:
        """Anonymise the file at ``source_url`` into ``dest_url`` (local paths or fsspec URLs).

        The output is encoded in the format ``dest_url``'s extension names (the source's own
        when it names none). The destination appears whole or not at all; on any error it is
        not created, and the source is never written.

        Raises:
            ConfigurationError: The method is ``none`` (it detects only and writes nothing),
                or ``dest_url`` is the source.
            ImageError: The image cannot be anonymised, or not written in that format.
        """
        if self.masking.method is AnonymizeMethod.NONE:
            raise ConfigurationError(
                "masking.method=none detects only: no image is written", field="method"
            )
        if location_within(dest_url, source_url) or location_within(source_url, dest_url):
            raise ConfigurationError(
                f"dest={dest_url!r} is the source: the source is never written", field="dest"
            )
        content = read_bytes(source_url)
        image = self.decode(content, source=source_url)
        faces = self.detect(image)
        encoded = encode_image(
            self.mask(image, faces),
            settings=self.output,
            source=source_url,
            format=_target_format(image.format, dest_url),
        )
        write_bytes_atomic(dest_url, encoded, protected_root=source_url)
        return AnonymizedImage(
            content=encoded, faces=faces, format=image.format, frame_count=len(image.frames)
        )


def _target_format(source_format: str, dest_url: str) -> str:
    """The format to write: what the destination's extension names, else the source's.

    A JPEG extension on an MPO source keeps MPO (both are JPEG files).
    """
    named = format_for_name(dest_url)
    if named is None or (named == "JPEG" and source_format == "MPO"):
        return source_format
    if named == "MPO" and source_format == "JPEG":
        return "JPEG"
    return named
