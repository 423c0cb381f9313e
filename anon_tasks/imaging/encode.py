"""Write decoded pixels back as an image file, in the source's own format or another one.

``encode_image`` writes frames with exactly the layout and bit depth it is given, without
metadata unless asked (and then never GPS, XMP, maker notes or an orientation tag), or raises
``UnsupportedImageError`` saying why it cannot (see ``layouts``). Decoding, then encoding
without changes, then decoding gives the same pixels: exactly for lossless formats, within the
format's own loss for JPEG, lossy WebP, AVIF and HEIF.

Animations are written as full canvases. Pillow's and libwebp's encoders merge a frame that
is identical to the one before it into that one's display time: what is shown is the same,
the file has a frame fewer.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable, Sequence
from typing import Any, Final

import cv2
import numpy as np
from PIL import Image

from anon_tasks.core.errors import ImageEncodeError, UnsupportedImageError
from anon_tasks.core.settings import OutputSettings
from anon_tasks.imaging.decoded import DecodedImage, UnsupportedLayoutError, channel_count
from anon_tasks.imaging.gif import gif_frames
from anon_tasks.imaging.high_bit import encode_png16, encode_tiff16
from anon_tasks.imaging.layouts import check_writable, converted
from anon_tasks.imaging.metadata import output_exif, with_app_segments
from anon_tasks.imaging.pillow_guard import describe

__all__ = ["encode_image"]

#: OpenCV's chroma sampling settings by Pillow's subsampling number.
_CV2_SAMPLING: Final[dict[int, int]] = {
    0: cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444,
    1: cv2.IMWRITE_JPEG_SAMPLING_FACTOR_422,
    2: cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420,
}


def encode_image(
    image: DecodedImage,
    *,
    settings: OutputSettings,
    source: str = "<bytes>",
    format: str | None = None,
) -> bytes:
    """Encode ``image`` in its source format (or ``format``), with its frames' layout and depth.

    Metadata is stripped unless ``settings.keep_metadata``: then the source EXIF is written
    without GPS, orientation, maker notes, thumbnails or XMP. The ICC profile is kept wherever
    the format holds one (not in GIF or BMP).

    Another format than the source's gets the same pixels or a refusal: gray becomes RGB where
    the format has no gray (WebP), and nothing else is converted. Frames that the format cannot
    hold (several frames into JPEG or BMP, an animation into TIFF pages, pages into an
    animation, 16-bit pixels into an 8-bit format, alpha into JPEG, partial alpha into GIF)
    are refused.

    Args:
        image: The frames to write and the source's metadata.
        settings: Output quality and metadata policy.
        source: The file's name or URL, for error messages.
        format: Pillow's name of the format to write (``"PNG"``, ``"JPEG"``...; any case);
            None writes the source's format.

    Returns:
        The encoded file.

    Raises:
        UnsupportedImageError: The format cannot hold these frames faithfully.
        ImageEncodeError: The encoder failed.
    """
    target = image.format if format is None else format.strip().upper()
    encoder = _ENCODERS.get(target)
    if encoder is None:
        raise UnsupportedImageError(f"cannot write {target} images", source=source)
    try:
        image = converted(image, target)
        check_writable(image)
        exif = output_exif(image.exif, source) if settings.keep_metadata else None
        return encoder(image, settings, exif)
    except UnsupportedLayoutError as exc:
        raise UnsupportedImageError(str(exc), source=source) from exc
    except Exception as exc:  # any encoder failure is reported as this image's failure
        raise ImageEncodeError(f"cannot encode {target}: {describe(exc)}", source=source) from exc


# --- Pillow options -------------------------------------------------------------------------


def _pil_frames(image: DecodedImage) -> list[Image.Image]:
    return [Image.fromarray(np.ascontiguousarray(frame)) for frame in image.frames]


def _metadata_options(image: DecodedImage, exif: bytes | None) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if image.icc_profile:
        options["icc_profile"] = image.icc_profile
    if exif:
        options["exif"] = exif
    return options


def _animation_options(image: DecodedImage) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if len(image.frames) > 1:
        options["save_all"] = True
    if image.is_animation:
        durations = list(image.durations_ms)
        options["duration"] = durations if len(durations) > 1 else durations[0]
    if image.loop is not None:
        options["loop"] = image.loop
    return options


def _save(frames: Sequence[Image.Image], fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    if len(frames) > 1:
        options["append_images"] = list(frames[1:])
    frames[0].save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _jpeg_options(image: DecodedImage, settings: OutputSettings) -> dict[str, Any]:
    quality = settings.jpeg_quality
    # A JPEG source keeps its chroma subsampling (re-encoding 4:2:0 chroma at full resolution
    # adds bytes and encoding time, not detail); other sources get full-resolution chroma at
    # high quality, where 4:2:0 would smear the coloured edges of masks.
    subsampling = image.jpeg_subsampling
    if subsampling is None:
        subsampling = 0 if quality >= 90 else 2
    return {
        "quality": quality,
        "subsampling": subsampling,
        "optimize": True,
        "progressive": image.progressive,
    }


# --- one encoder per format -----------------------------------------------------------------


def _encode_jpeg(image: DecodedImage, settings: OutputSettings, exif: bytes | None) -> bytes:
    """JPEG through libjpeg in OpenCV, which releases the GIL (Pillow's JPEG encoder holds it,
    so encoding would not scale over threads), with the same settings Pillow would use; the
    ICC profile and EXIF go in as APP2 and APP1 segments."""
    options = _jpeg_options(image, settings)
    frame = image.frames[0]
    pixels = frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
    params = [
        cv2.IMWRITE_JPEG_QUALITY,
        options["quality"],
        cv2.IMWRITE_JPEG_OPTIMIZE,
        int(options["optimize"]),
        cv2.IMWRITE_JPEG_PROGRESSIVE,
        int(options["progressive"]),
    ]
    if frame.ndim == 3:
        params += [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, _CV2_SAMPLING[options["subsampling"]]]
    ok, encoded = cv2.imencode(".jpg", pixels, params)
    if not ok:
        raise OSError("libjpeg refused the frame")
    return with_app_segments(encoded.tobytes(), exif=exif, icc_profile=image.icc_profile)


def _encode_mpo(image: DecodedImage, settings: OutputSettings, exif: bytes | None) -> bytes:
    options = _jpeg_options(image, settings) | _metadata_options(image, exif)
    frames = _pil_frames(image)
    if len(frames) > 1:
        options["save_all"] = True
    return _save(frames, "MPO", **options)


def _encode_png(image: DecodedImage, settings: OutputSettings, exif: bytes | None) -> bytes:
    del settings  # PNG is lossless: there is nothing to tune
    if image.frames[0].dtype == np.uint16:
        return encode_png16(image, exif)
    options = _metadata_options(image, exif) | _animation_options(image)
    return _save(_pil_frames(image), "PNG", **options)


def _encode_webp(image: DecodedImage, settings: OutputSettings, exif: bytes | None) -> bytes:
    options = _metadata_options(image, exif) | _animation_options(image)
    # exact keeps the colour under transparent pixels, so lossless stays bit-exact.
    options |= {"lossless": image.lossless, "quality": settings.jpeg_quality, "exact": True}
    return _save(_pil_frames(image), "WEBP", **options)


def _encode_gif(image: DecodedImage, settings: OutputSettings, exif: bytes | None) -> bytes:
    del settings, exif  # GIF has no quality setting and no EXIF
    frames, keyed = gif_frames(image.frames)
    options = _animation_options(image)
    options["optimize"] = False  # Pillow's palette optimisation may reorder our transparent index
    if keyed:
        options["disposal"] = 2  # each canvas replaces the one before
    return _save(frames, "GIF", **options)


def _encode_tiff(image: DecodedImage, settings: OutputSettings, exif: bytes | None) -> bytes:
    del settings, exif  # TIFF is written lossless; its tags are rebuilt, EXIF is not carried
    if image.frames[0].dtype == np.uint16:
        return encode_tiff16(image.frames, image.icc_profile)
    options = _metadata_options(image, None) | {"compression": "tiff_adobe_deflate"}
    if len(image.frames) > 1:
        options["save_all"] = True
    return _save(_pil_frames(image), "TIFF", **options)


def _encode_bmp(image: DecodedImage, settings: OutputSettings, exif: bytes | None) -> bytes:
    del settings, exif  # BMP is uncompressed and holds no EXIF
    frame = image.frames[0]
    if channel_count(frame) == 4:
        return _bmp_rgba(frame)
    return _save(_pil_frames(image), "BMP")


def _bmp_rgba(frame: np.ndarray) -> bytes:
    """32-bit BMP with an alpha mask (BITMAPV4HEADER, bit fields): Pillow writes RGBA as
    32-bit BMP without a mask, which reads back without alpha."""
    height, width = frame.shape[:2]
    pixels = np.ascontiguousarray(frame[::-1, :, [2, 1, 0, 3]]).tobytes()  # bottom-up BGRA
    offset = 14 + 108
    info = struct.pack("<IiiHHIIiiII", 108, width, height, 1, 32, 3, len(pixels), 2835, 2835, 0, 0)
    masks = struct.pack("<4I", 0x00FF0000, 0x0000FF00, 0x000000FF, 0xFF000000)
    colour_space = b"BGRs" + bytes(36 + 12)  # LCS_sRGB; no end points, no gamma
    header = b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset)
    return header + info + masks + colour_space + pixels


def _encode_avif(image: DecodedImage, settings: OutputSettings, exif: bytes | None) -> bytes:
    options = _metadata_options(image, exif) | _animation_options(image)
    options["quality"] = settings.jpeg_quality
    return _save(_pil_frames(image), "AVIF", **options)


def _encode_heif(image: DecodedImage, settings: OutputSettings, exif: bytes | None) -> bytes:
    options = _metadata_options(image, exif) | {"quality": settings.jpeg_quality}
    if len(image.frames) > 1:
        options["save_all"] = True
    return _save(_pil_frames(image), "HEIF", **options)


_ENCODERS: Final[dict[str, Callable[[DecodedImage, OutputSettings, bytes | None], bytes]]] = {
    "JPEG": _encode_jpeg,
    "MPO": _encode_mpo,
    "PNG": _encode_png,
    "WEBP": _encode_webp,
    "GIF": _encode_gif,
    "TIFF": _encode_tiff,
    "BMP": _encode_bmp,
    "AVIF": _encode_avif,
    "HEIF": _encode_heif,
}
