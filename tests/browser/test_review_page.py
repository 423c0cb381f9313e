"""The review page in a real browser: thumbnails render, masks and near misses are outlined,
pages link to each other, and nothing on it runs or loads from elsewhere.

The page is made the way a user makes it: the ``anonymize`` command on a folder, which prints
where the page is.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anon_tasks.review.thumbnails import MASK_RGB, NEAR_MISS_RGB
from anon_tasks.review.writer import PAGE_SIZE
from tests.conftest import shared_path
from tests.test_deployments import BIN

pytestmark = pytest.mark.slow

INTERVIEW = ("wider-dev", "images", "13--Interview", "13_Interview_Interview_Sequences_13_134.jpg")
#: Plain images after the two photos, so that the review needs a second page.
FILLERS = PAGE_SIZE


@pytest.fixture(scope="module")
def reviewed(tmp_path_factory, astronaut_rgb) -> tuple[Path, str]:
    """A folder anonymised with ``anonymize --method solid``: its dest and the command's output."""
    root = tmp_path_factory.mktemp("review")
    source, dest = root / "raw", root / "clean"
    source.mkdir()
    Image.fromarray(astronaut_rgb).save(source / "astronaut.jpg", quality=92)
    shutil.copyfile(shared_path(*INTERVIEW), source / "interview <img src=x onerror=alert(1)>.jpg")
    for index in range(FILLERS):
        shade = 40 + 3 * index
        Image.fromarray(np.full((48, 64, 3), shade, np.uint8)).save(
            source / f"plain-{index:02d}.png"
        )
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)  # the command's own temporary server
    done = subprocess.run(
        [str(BIN / "anonymize"), str(source), str(dest), "--method", "solid", "--no-progress"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return dest, done.stdout


def _colour_pixels(png: bytes, colour: tuple[int, int, int], tolerance: int = 40) -> int:
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    return int((np.abs(pixels - np.array(colour)).max(axis=2) <= tolerance).sum())


def test_the_review_page_shows_outlined_thumbnails_and_pages(reviewed, page) -> None:
    dest, printed = reviewed
    index = dest / "_anonymize" / "review" / "index.html"
    assert f"review: {index}" in printed.splitlines()
    blocked: list[str] = []
    page.on("requestfailed", lambda request: blocked.append(request.url))
    page.on("console", lambda message: blocked.append(message.text))
    page.goto(index.as_uri())
    page.wait_for_load_state("load")

    figures = page.locator("figure")
    assert figures.count() == PAGE_SIZE
    rendered = page.evaluate(
        "Array.from(document.images).map(i => i.complete && i.naturalWidth > 0)"
    )
    assert rendered == [True] * PAGE_SIZE
    # Near misses first: the interview photo (near misses) before the astronaut (masked only).
    first, second = figures.nth(0), figures.nth(1)
    assert first.get_attribute("data-near-misses") != "0"
    assert (
        first.locator(".name").inner_text() == "interview <img src=x onerror=alert(1)>.jpg"
    )  # text, not markup
    assert second.locator(".name").inner_text() == "astronaut.jpg"
    assert "near misses 0." in first.inner_text()
    interview, astronaut = first.locator("img").screenshot(), second.locator("img").screenshot()
    assert _colour_pixels(interview, NEAR_MISS_RGB, tolerance=60) > 30
    assert _colour_pixels(astronaut, MASK_RGB) > 50
    assert _colour_pixels(astronaut, NEAR_MISS_RGB, tolerance=30) == 0
    assert "would also mask" in page.locator("body").inner_text()

    page.get_by_role("link", name="2", exact=True).first.click()
    page.wait_for_load_state("load")
    assert page.url.endswith("page-0002.html")
    assert page.locator("figure").count() == FILLERS + 2 - PAGE_SIZE
    assert page.evaluate("Array.from(document.images).every(i => i.naturalWidth > 0)")
    assert blocked == []


def test_a_thumbnail_links_to_the_masked_output(reviewed, page) -> None:
    dest, _ = reviewed
    page.goto((dest / "_anonymize" / "review" / "index.html").as_uri())
    link = page.locator("figure a").nth(1)
    link.click()
    page.wait_for_load_state("load")
    assert page.url == (dest / "astronaut.jpg").as_uri()
