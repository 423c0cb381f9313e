"""The detection pipeline: read, decode and detect on a few threads, results in input order.

On the CPU, one thread per core reads, decodes and detects with a single-threaded model run:
images run side by side (the GIL is released in Pillow and ONNX Runtime). Each thread takes
one image at a time, or up to ``CPU_BATCH_SIZE`` consecutive small files (``SMALL_FILE_BYTES``
each) together, whose small inputs of one size then share a model run. On CUDA, reads and
decodes run on ``pipeline_threads()`` threads ahead of the model, which runs in the caller's
thread on full batches of one image size: images wait (up to ``BATCH_WINDOW_BATCHES`` batches
of them, ``BATCH_WINDOW_BYTES`` of pixels) for others of their size, since every new input
shape costs CUDA seconds of planning. Either way at most a few images are in flight: memory is
bounded by the look-ahead and the window, not by the number of images.

The faces are the detector's candidates, down to its score floor (see ``pipeline.finding``).
``detect_faces`` (the Prefect task) wraps :func:`detect_images`; the GPU benchmark calls it
directly.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from anon_tasks.core.concurrency import ordered_map, pipeline_threads
from anon_tasks.core.errors import ImageError
from anon_tasks.core.faces import Face
from anon_tasks.core.records import ImageRef
from anon_tasks.detection.detector import CenterFaceDetector, side_by_side_runs
from anon_tasks.imaging.decode import decode_image
from anon_tasks.imaging.decoded import DecodedImage
from anon_tasks.pipeline.finding import batch_key, find_faces, find_faces_batched
from anon_tasks.storage.locations import join_url
from anon_tasks.storage.reads import read_bytes

__all__ = ["FetchedImage", "content_digest", "detect_images", "fetch_and_decode", "vanished"]


@dataclass(frozen=True)
class FetchedImage:
    """One source image read and decoded, or why it could not be.

    Attributes:
        image: The reference it was read for.
        url: Where it was read from; empty when the path itself was refused.
        decoded: Its upright frames; None when it could not be read or decoded.
        error: The per-image error (``ImageError`` or ``FileNotFoundError``), else None.
        was_read: Its bytes were read from storage.
        content_sha256: SHA-256 of the bytes read (what ``decoded`` was decoded from).
    """

    image: ImageRef
    url: str = ""
    decoded: DecodedImage | None = None
    error: Exception | None = None
    was_read: bool = False
    content_sha256: str | None = None


def vanished(image: ImageRef) -> str:
    """The error of an image removed from the source while the run read it."""
    return f"{image.relative_path}: removed from the source during the run"


def content_digest(content: bytes) -> str:
    """The SHA-256 of a file's bytes, as detections and the manifest record it."""
    return hashlib.sha256(content).hexdigest()


def fetch_and_decode(
    source: str, image: ImageRef, options: Mapping[str, Any], *, max_pixels: int
) -> FetchedImage:
    """Read and decode one image, refusing one of more than ``max_pixels`` before decoding.

    Per-image errors (an unsafe path, a file removed since listing, undecodable bytes) come back
    in the value; storage errors are raised, so the caller's retry policy applies.
    """
    try:
        url = join_url(source, image.relative_path)
        content = read_bytes(url, options)
    except (ImageError, FileNotFoundError) as exc:
        return FetchedImage(image=image, error=exc)
    digest = content_digest(content)
    try:
        decoded = decode_image(content, source=image.relative_path, max_pixels=max_pixels)
    except ImageError as exc:
        return FetchedImage(image=image, url=url, error=exc, was_read=True, content_sha256=digest)
    return FetchedImage(image=image, url=url, decoded=decoded, was_read=True, content_sha256=digest)


def detect_images(
    detector: CenterFaceDetector,
    source: str,
    images: Sequence[ImageRef],
    options: Mapping[str, Any],
    *,
    max_pixels: int,
) -> Iterator[tuple[FetchedImage, tuple[Face, ...] | Exception]]:
    """Each image with its candidates (down to the detector's floor) or its error, in order.

    Args:
        detector: The detector on its device; its settings say the quality and the floor.
        source: The dataset root the references are relative to.
        images: What to read.
        options: fsspec storage options for ``source``.
        max_pixels: Images above this are refused before decoding (``OutputSettings``).

    Example:
        >>> for fetched, faces in detect_images(detector, "data/raw", refs, {}, max_pixels=N):
        ...     print(fetched.image.relative_path, faces)
    """

    def fetch(image: ImageRef) -> FetchedImage:
        return fetch_and_decode(source, image, options, max_pixels=max_pixels)

    runs = detector.concurrent_runs
    if runs > 1:
        # CPU: each thread reads, decodes and detects one image (or a few small ones), one
        # thread per core.
        def chunk(
            refs: list[ImageRef],
        ) -> list[tuple[FetchedImage, tuple[Face, ...] | Exception]]:
            fetched = [fetch(image) for image in refs]
            with side_by_side_runs():
                return list(zip(fetched, _detect_chunk(detector, fetched), strict=True))

        chunks = _small_file_chunks(images, detector.batch_size)
        for done in ordered_map(chunk, chunks, threads=runs, ahead=2 * runs):
            yield from done
        return
    # One run at a time (CUDA): reads and decodes on a pool, batches in this thread.
    threads = pipeline_threads()
    batch = detector.batch_size
    stream = ordered_map(fetch, images, threads=threads, ahead=max(2 * threads, 2 * batch))
    yield from _same_size_batches(detector, stream, window=BATCH_WINDOW_BATCHES * batch)


#: Files up to this size go to a CPU thread together (up to the batch size): a 64 KB file
#: decodes to at most about 66 MB (deflate's ratio), so a group holds no more pixels than the
#: look-ahead of single images may.
SMALL_FILE_BYTES = 64 * 1024


def _small_file_chunks(images: Sequence[ImageRef], size: int) -> Iterator[list[ImageRef]]:
    """``images`` in order, consecutive small files in groups of up to ``size``, others alone."""
    group: list[ImageRef] = []
    for image in images:
        if image.size_bytes > SMALL_FILE_BYTES:
            if group:
                yield group
                group = []
            yield [image]
            continue
        group.append(image)
        if len(group) >= size:
            yield group
            group = []
    if group:
        yield group


#: Images held back to fill same-size batches, in batches (on CUDA: 4 x 8 decoded images).
BATCH_WINDOW_BATCHES = 4
#: ... and in bytes of decoded pixels, whichever comes first (32 photos of 12 MP are 1.2 GB).
BATCH_WINDOW_BYTES = 512 * 1024 * 1024


def _same_size_batches(
    detector: CenterFaceDetector, stream: Iterator[FetchedImage], *, window: int
) -> Iterator[tuple[FetchedImage, tuple[Face, ...] | Exception]]:
    """Detect images in batches of one network size, results in input order.

    Images are held back by their ``batch_key`` until their size has a full batch.
    At most ``window`` images and ``BATCH_WINDOW_BYTES`` of their pixels are held (waiting for
    a batch, or done and waiting for an earlier one); beyond either, the batch holding the
    oldest image runs as it is. Images that run alone (and per-image errors) are done as they
    come.
    """
    waiting: dict[tuple[int, int], list[tuple[int, FetchedImage]]] = {}
    done: dict[int, tuple[FetchedImage, tuple[Face, ...] | Exception]] = {}
    next_out = 0
    held_bytes = 0

    def run(members: list[tuple[int, FetchedImage]]) -> None:
        outcomes = _detect_chunk(detector, [item for _, item in members])
        for (index, item), outcome in zip(members, outcomes, strict=True):
            done[index] = (item, outcome)

    def ready() -> Iterator[tuple[FetchedImage, tuple[Face, ...] | Exception]]:
        nonlocal next_out, held_bytes
        while next_out in done:
            item, outcome = done.pop(next_out)
            held_bytes -= _pixel_bytes(item)
            next_out += 1
            yield item, outcome

    def run_oldest() -> None:
        run(waiting.pop(min(waiting, key=lambda size: waiting[size][0][0])))

    for index, item in enumerate(stream):
        held_bytes += _pixel_bytes(item)
        key = batch_key(detector, item.decoded) if item.decoded is not None else None
        if key is None:
            run([(index, item)])
        else:
            members = waiting.setdefault(key, [])
            members.append((index, item))
            if len(members) >= detector.batch_size_for(key):
                run(waiting.pop(key))
        yield from ready()
        while waiting and (index + 1 - next_out >= window or held_bytes > BATCH_WINDOW_BYTES):
            run_oldest()
            yield from ready()
    while waiting:
        run_oldest()
        yield from ready()


def _pixel_bytes(item: FetchedImage) -> int:
    return sum(frame.nbytes for frame in item.decoded.frames) if item.decoded is not None else 0


def _detect_chunk(
    detector: CenterFaceDetector, chunk: list[FetchedImage]
) -> list[tuple[Face, ...] | Exception]:
    """Candidates of each decoded image of a chunk, or the image's error."""
    decoded = [item.decoded for item in chunk if item.decoded is not None]
    try:
        found: list[tuple[Face, ...] | Exception] = list(find_faces_batched(detector, decoded))
    except ImageError:  # one bad image in a batch: find it image by image
        found = []
        for image in decoded:
            try:
                found.append(find_faces(detector, image))
            except ImageError as exc:
                found.append(exc)
    outcomes = iter(found)
    return [item.error if item.error is not None else next(outcomes) for item in chunk]
