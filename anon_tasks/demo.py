"""``make demo``: anonymise sample photos with the ``anonymize`` command and say where to look.

The photos are public-domain pictures bundled with scikit-image (a dependency of deface), written
as a small dataset: a PNG with a caption sidecar, a grayscale photo, a JPEG stored sideways with
an EXIF orientation tag and GPS coordinates, and an RGBA PNG. The command runs the
anonymize-dataset flow (on Prefect's temporary local server unless PREFECT_API_URL is set).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from anon_tasks import cli

logger = logging.getLogger("anon_tasks.demo")


def write_samples(folder: Path) -> list[Path]:
    """Write the sample dataset into ``folder``; returns the files written."""
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    astronaut = Image.fromarray(data.astronaut())
    samples = {
        "astronaut.png": astronaut,
        "people/cameraman.png": Image.fromarray(data.camera()),
        "people/astronaut_rgba.png": Image.fromarray(
            np.dstack([data.astronaut(), np.full((512, 512), 200, np.uint8)])
        ),
    }
    paths = []
    for name, image in samples.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path)
        paths.append(path)
    # A phone photo stored sideways: the EXIF tag turns it upright, and GPS says where it was taken.
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010F] = "DemoCam"
    exif.get_ifd(0x8825).update({1: "N", 2: (52.0, 31.0, 12.0), 3: "E", 4: (13.0, 24.0, 0.0)})
    sideways = folder / "phone/rotated_with_gps.jpg"
    sideways.parent.mkdir(parents=True, exist_ok=True)
    astronaut.transpose(Image.Transpose.ROTATE_90).save(sideways, quality=95, exif=exif)
    paths.append(sideways)
    caption = folder / "astronaut.txt"  # a LoRA-style caption sidecar
    caption.write_text("photo of an astronaut in a white suit, american flag\n")
    paths.append(caption)
    return paths


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    root = Path(args[0] if args else "demo-output")
    source, dest = root / "input", root / "anonymized"
    write_samples(source)
    code = cli.main([str(source), str(dest), "--caption-note", "faces are blurred"])
    sys.stdout.write(
        f"\nSample photos: {source}/\n"
        f"Anonymised copies (same relative paths): {dest}/\n"
        f"Audit manifest, one line per image: {dest}/_anonymize/manifest.jsonl\n"
        f"Review page (masks and near misses; open it in a browser): "
        f"{dest}/_anonymize/review/index.html\n"
        f"Caption with the note added: {dest}/astronaut.txt\n"
        "Run `make demo` again: nothing is re-read or re-inferred (the manifest says unchanged).\n"
    )
    return code


if __name__ == "__main__":
    raise SystemExit(main())
