"""The library path end to end on real photos and on the awkward corpus (the acceptance set)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from anon_tasks.core.errors import ImageDecodeError, ImageError, ImageTooLargeError
from anon_tasks.core.faces import Face
from anon_tasks.core.settings import AnonymizeMethod, DetectionSettings, MaskSettings
from anon_tasks.detection.detector import CenterFaceDetector
from anon_tasks.imaging.decode import decode_image
from anon_tasks.imaging.decoded import to_detector_rgb
from anon_tasks.imaging.masking import clip_box_px, masked_pixels, scaled_box
from anon_tasks.pipeline.anonymizer import Anonymizer
from tests.conftest import shared_path

FACE = "face"  # anonymised; the detector finds at least one face and it is masked
NO_FACE = "no face"  # anonymised; the detector finds nothing, pixels are only re-encoded

#: Every file of ../shared/data/awkward and what must happen to it.
AWKWARD: dict[str, object] = {
    "32-lens_data.jpeg": NO_FACE,
    "IMG_5195.HEIC": NO_FACE,
    "Landscape_8.jpg": NO_FACE,
    "Portrait_6.jpg": NO_FACE,
    "app13-multiple.jpg": FACE,  # three puppies: one dog face scores 0.56 and is masked
    "astronaut_cmyk.jpg": FACE,
    "astronaut_exif_orientation_2.jpg": FACE,
    "astronaut_exif_orientation_3.jpg": FACE,
    "astronaut_exif_orientation_6.jpg": FACE,
    "astronaut_exif_orientation_8.jpg": FACE,
    "astronaut_gray.jpg": FACE,
    "astronaut_head_rgb16.png": FACE,
    "astronaut_head_rgba16.png": FACE,
    "astronaut_lossy.webp": FACE,
    "astronaut_progressive.jpg": FACE,
    "astronaut_rgba8_transparent_stripe.png": FACE,
    "astronaut_tiled_6144x3072.jpg": FACE,
    "broken.png": ImageDecodeError,
    "broken_data_stream.png": ImageDecodeError,
    "camera_gray16.png": FACE,
    "decompression_bomb.gif": ImageTooLargeError,
    "exif_imagemagick_orientation.png": NO_FACE,  # an abstract pattern
    "flower.webp": NO_FACE,
    "hopper.avif": FACE,
    "hopper.gif": FACE,
    "hopper.heif": FACE,
    "hopper.jpg": FACE,
    "hopper.png": FACE,
    "hopper.tif": FACE,
    "hopper.webp": FACE,
    "hopper_bad_exif.jpg": NO_FACE,  # its pixels are glitched stripes
    "hopper_gray.jpg": FACE,
    "hopper_orientation_2.jpg": FACE,
    "hopper_orientation_3.jpg": FACE,
    "hopper_orientation_4.jpg": FACE,
    "hopper_orientation_5.jpg": FACE,
    "hopper_orientation_6.jpg": FACE,
    "hopper_orientation_6.webp": FACE,
    "hopper_orientation_7.jpg": FACE,
    "hopper_orientation_8.jpg": FACE,
    "i_trns.png": NO_FACE,
    "icc_profile_big.jpg": NO_FACE,
    "iss634.webp": NO_FACE,
    "junk_jpeg_header.jpg": NO_FACE,
    "pil123rgba.png": NO_FACE,
    "pil_sample_cmyk.jpg": NO_FACE,
    "png_decompression_dos.png": ImageDecodeError,
    "portrait_6.jpg": NO_FACE,
    "rot1mir0.avif": NO_FACE,
    "samplefilehub.heif": NO_FACE,
    "sugarshack.mpo": NO_FACE,
    "tiff_16bit_RGBa.tiff": NO_FACE,
    "transparency.avif": NO_FACE,
    "transparent.webp": NO_FACE,
    "truncated_image.png": ImageDecodeError,
    "truncated_jpeg.jpg": ImageDecodeError,
    "uncompressed_la.png": NO_FACE,
    "xmp_tags_orientation.png": NO_FACE,
}


@pytest.fixture(scope="module")
def anonymizer() -> Anonymizer:
    return Anonymizer(detection=DetectionSettings(device="cpu"))


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    inter_w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    inter_h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = inter_w * inter_h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def faces_still_found(detector: CenterFaceDetector, frame: np.ndarray, faces: list[Face]) -> list:
    """Faces of ``faces`` that the detector still finds (IoU >= 0.5) in ``frame``."""
    found = detector.detect(to_detector_rgb(frame)).above(0.4).xyxy.tolist()
    return [face for face in faces if any(iou(face.xyxy, box) >= 0.5 for box in found)]


def detail(pixels: np.ndarray) -> float:
    """High-frequency energy: variance of the Laplacian of the luminance (or gray) channel."""
    import cv2

    gray = to_detector_rgb(pixels)[..., 1].astype(np.float32)
    return float(cv2.Laplacian(gray, cv2.CV_32F).var())


def assert_faces_destroyed(original: np.ndarray, masked: np.ndarray, faces: list[Face]) -> None:
    """The centre of each face (inside the blur ellipse too) lost nearly all its detail."""
    for face in faces:
        x1, y1, x2, y2 = face.xyxy
        inset_x, inset_y = (x2 - x1) * 0.25, (y2 - y1) * 0.25
        bounds = clip_box_px(
            (x1 + inset_x, y1 + inset_y, x2 - inset_x, y2 - inset_y), *original.shape[1::-1]
        )
        if bounds is None or min(bounds[2] - bounds[0], bounds[3] - bounds[1]) < 4:
            continue  # too small to measure detail; masking itself is tested in test_masking
        bx1, by1, bx2, by2 = bounds
        before = detail(original[by1:by2, bx1:bx2])
        after = detail(masked[by1:by2, bx1:bx2])
        assert after <= 0.2 * before + 1.0, (face, before, after)


def assert_masked_and_untouched_elsewhere(
    original: np.ndarray, masked: np.ndarray, faces: list[Face], mask_scale: float = 1.0
) -> None:
    """Every face box changed; outside all scaled boxes, pixels moved by re-encoding only."""
    height, width = original.shape[:2]
    outside = np.ones((height, width), bool)
    for face in faces:
        bounds = clip_box_px(scaled_box(face.xyxy, mask_scale), width, height)
        assert bounds is not None
        x1, y1, x2, y2 = bounds
        outside[y1:y2, x1:x2] = False
    diff = np.abs(original.astype(np.float64) - masked.astype(np.float64))
    if diff.ndim == 3:
        diff = diff.max(axis=2)
    scale = 257.0 if original.dtype == np.uint16 else 1.0
    assert diff[outside].mean() / scale < 3.0


@pytest.mark.parametrize("name", sorted(AWKWARD))
def test_awkward_corpus(anonymizer: Anonymizer, name: str) -> None:
    content = shared_path("awkward", name).read_bytes()
    expected = AWKWARD[name]
    if isinstance(expected, type):
        with pytest.raises(expected) as caught:
            anonymizer.anonymize_bytes(content, source=name)
        assert name in str(caught.value)
        return
    result = anonymizer.anonymize_bytes(content, source=name)
    source = decode_image(content, source=name)
    output = decode_image(result.content, source=name)
    assert output.format == source.format  # the format is kept
    assert len(output.frames) == len(source.frames) == result.frame_count
    for before, after in zip(source.frames, output.frames, strict=True):
        assert after.shape == before.shape  # upright, same layout (alpha, gray kept)
        assert after.dtype == before.dtype  # 16-bit stays 16-bit
    if expected == NO_FACE:
        assert result.faces == ()
        return
    assert result.faces
    for index, (before, after) in enumerate(zip(source.frames, output.frames, strict=True)):
        frame_faces = [face for face in result.faces if face.frame == index]
        assert_faces_destroyed(before, after, frame_faces)
        assert_masked_and_untouched_elsewhere(before, after, frame_faces)
        if before.ndim == 3 and before.shape[2] in (2, 4):
            covered = masked_pixels(*before.shape[:2], frame_faces, anonymizer.masking)
            # Alpha as it was outside the masks; inside, it is masked with the colour.
            np.testing.assert_array_equal(after[..., -1][~covered], before[..., -1][~covered])


def test_every_awkward_file_is_in_the_table() -> None:
    folder = shared_path("awkward")
    assert sorted(p.name for p in folder.iterdir()) == sorted(AWKWARD)


@pytest.mark.parametrize("method", list(AnonymizeMethod))
def test_each_method_on_the_astronaut(astronaut_rgb, method: AnonymizeMethod) -> None:
    buffer = io.BytesIO()
    Image.fromarray(astronaut_rgb).save(buffer, format="PNG")
    anonymizer = Anonymizer(
        detection=DetectionSettings(device="cpu"), masking=MaskSettings(method=method)
    )
    result = anonymizer.anonymize_bytes(buffer.getvalue(), source="astronaut.png")
    assert len(result.faces) == 1
    masked = decode_image(result.content).frames[0]
    face = list(result.faces)
    if method is AnonymizeMethod.NONE:
        np.testing.assert_array_equal(masked, astronaut_rgb)  # lossless PNG: pixels unchanged
        assert faces_still_found(anonymizer.detector, masked, face) == face
        return
    assert_masked_and_untouched_elsewhere(astronaut_rgb, masked, face)
    assert_faces_destroyed(astronaut_rgb, masked, face)
    assert not faces_still_found(anonymizer.detector, masked, face)


def test_rotated_phone_photo_is_masked_in_the_right_place(astronaut_rgb, tmp_path) -> None:
    """Pixels stored sideways with EXIF orientation 6: found upright, written upright, no EXIF."""
    exif = Image.Exif()
    exif[0x0112] = 6
    exif.get_ifd(0x8825).update({1: "N", 2: (52.0, 31.0, 12.0)})
    sideways = Image.fromarray(astronaut_rgb).transpose(Image.Transpose.ROTATE_90)
    source = tmp_path / "phone.jpg"
    sideways.save(source, quality=95, exif=exif)
    dest = tmp_path / "out" / "phone.jpg"
    result = Anonymizer(detection=DetectionSettings(device="cpu")).anonymize_file(
        str(source), str(dest)
    )
    (face,) = result.faces
    x1, y1, x2, y2 = face.xyxy
    assert 150 < x1 < 200 and 40 < y1 < 80 and 250 < x2 < 290 and 160 < y2 < 200  # noqa: PT018
    with Image.open(dest) as written:
        assert written.size == (512, 512)
        assert not written.getexif()  # no orientation, no GPS, no EXIF at all
        assert written.format == "JPEG"
    upright_source = decode_image(source.read_bytes()).frames[0]
    upright = np.asarray(Image.open(dest).convert("RGB"))
    assert_masked_and_untouched_elsewhere(upright_source, upright, [face])
    assert not faces_still_found(Anonymizer().detector, upright, [face])


def test_failed_image_leaves_no_output(tmp_path) -> None:
    source = tmp_path / "bad.jpg"
    source.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    dest = tmp_path / "out" / "bad.jpg"
    with pytest.raises(ImageError, match=r"bad\.jpg"):
        Anonymizer(detection=DetectionSettings(device="cpu")).anonymize_file(str(source), str(dest))
    assert not dest.exists()
    assert not list(tmp_path.rglob(".anon-tmp-*"))


@pytest.mark.parametrize(
    ("extension", "pil_format"), [(".mpo", "MPO"), (".webp", "WEBP"), (".gif", "GIF")]
)
def test_every_frame_of_a_multi_frame_file_is_masked(astronaut_rgb, extension, pil_format) -> None:
    """A face in the second frame of a stereo pair or an animation must not pass unmasked."""
    frames = [np.roll(astronaut_rgb, shift, axis=1) for shift in (0, 60, 120)]
    if pil_format == "MPO":
        frames = frames[:2]
    buffer = io.BytesIO()
    first, *rest = (Image.fromarray(frame) for frame in frames)
    options = {"quality": 95} if pil_format != "GIF" else {}
    if pil_format != "MPO":
        options.update(duration=100, loop=0)
    first.save(buffer, format=pil_format, save_all=True, append_images=rest, **options)
    anonymizer = Anonymizer(detection=DetectionSettings(device="cpu"))
    result = anonymizer.anonymize_bytes(buffer.getvalue(), source=f"anim{extension}")
    output = decode_image(result.content)
    assert output.format == pil_format
    assert len(output.frames) == len(frames) == result.frame_count
    assert sorted({face.frame for face in result.faces}) == list(range(len(frames)))
    source = decode_image(buffer.getvalue())
    for index, (before, after) in enumerate(zip(source.frames, output.frames, strict=True)):
        frame_faces = [face for face in result.faces if face.frame == index]
        assert_faces_destroyed(before, after, frame_faces)
        assert not faces_still_found(anonymizer.detector, after, frame_faces)
