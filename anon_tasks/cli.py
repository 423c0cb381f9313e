"""The ``anonymize`` command: anonymise every image of a folder (or one file) into another."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from anon_tasks.anonymizer import Anonymizer
from anon_tasks.dataset import iter_image_paths
from anon_tasks.errors import AnonTasksError, ConfigurationError, ImageError
from anon_tasks.settings import (
    AnonymizeMethod,
    DetectionSettings,
    MaskSettings,
    OutputSettings,
    build_settings,
)
from anon_tasks.storage import is_local, join_url

logger = logging.getLogger("anon_tasks.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="anonymize",
        description="Find faces in images with CenterFace and hide them. The output keeps each "
        "image's relative path and format; EXIF/GPS is stripped.",
    )
    parser.add_argument("source", help="an image file or a folder of images")
    parser.add_argument("dest", help="output file or folder (never inside the source)")
    parser.add_argument(
        "--method",
        choices=[m.value for m in AnonymizeMethod],
        default=AnonymizeMethod.BLUR.value,
        help="how faces are hidden (default: blur)",
    )
    parser.add_argument("--threshold", type=float, default=0.4, help="detection score threshold")
    parser.add_argument("--mask-scale", type=float, default=1.0, help="scale of each face box")
    parser.add_argument(
        "--no-ellipse", action="store_true", help="blur the whole box, not an ellipse"
    )
    parser.add_argument("--mosaic-size", type=int, default=20, help="mosaic block edge in px")
    parser.add_argument("--jpeg-quality", type=int, default=95, help="JPEG/WebP quality")
    parser.add_argument(
        "--keep-metadata", action="store_true", help="keep EXIF minus GPS and orientation"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every image")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``anonymize`` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        summary = run(args)
    except ConfigurationError as exc:
        logger.error("configuration error: %s", exc)
        return 2
    except AnonTasksError as exc:
        logger.error("%s", exc)
        return 1
    if args.json:
        sys.stdout.write(json.dumps(summary) + "\n")
    else:
        for key, value in summary.items():
            sys.stdout.write(f"{key}: {value}\n")
    return 1 if summary["images_failed"] else 0


def run(args: argparse.Namespace) -> dict[str, object]:
    """Anonymise ``args.source`` into ``args.dest`` through the library path."""
    anonymizer = Anonymizer(
        detection=build_settings(DetectionSettings, threshold=args.threshold, device=args.device),
        masking=build_settings(
            MaskSettings,
            method=args.method,
            mask_scale=args.mask_scale,
            ellipse=not args.no_ellipse,
            mosaic_size=args.mosaic_size,
        ),
        output=build_settings(
            OutputSettings, jpeg_quality=args.jpeg_quality, keep_metadata=args.keep_metadata
        ),
    )
    pairs = _pairs(args.source, args.dest)
    started = time.perf_counter()
    written = failed = faces = 0
    failures: list[str] = []
    for source_url, dest_url in pairs:
        try:
            result = anonymizer.anonymize_file(source_url, dest_url)
        except ImageError as exc:
            failed += 1
            failures.append(str(exc))
            logger.warning("failed: %s", exc)
            continue
        written += 1
        faces += len(result.faces)
        logger.debug("%s: %d face(s)", source_url, len(result.faces))
    return {
        "images_total": len(pairs),
        "images_written": written,
        "images_failed": failed,
        "faces_found": faces,
        "seconds": round(time.perf_counter() - started, 3),
        "failures": failures,
    }


def _pairs(source: str, dest: str) -> list[tuple[str, str]]:
    if is_local(source) and Path(source).is_file():
        return [(source, dest)]
    if is_local(source) and is_local(dest):
        source_dir, dest_dir = Path(source).resolve(), Path(dest).resolve()
        if dest_dir == source_dir or source_dir in dest_dir.parents:
            raise ConfigurationError(
                f"dest={dest!r} is inside source={source!r}: outputs would be read as inputs",
                field="dest",
            )
    return [(join_url(source, rel), join_url(dest, rel)) for rel in iter_image_paths(source)]


if __name__ == "__main__":
    raise SystemExit(main())
