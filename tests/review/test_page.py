"""The review page's HTML: names are text, never markup; links lead to the outputs."""

from __future__ import annotations

from html.parser import HTMLParser
from urllib.parse import unquote

from hypothesis import given, settings
from hypothesis import strategies as st

from anon_tasks.review.page import PageContext, page_html, page_name, sheet_name
from anon_tasks.review.selection import score_bands
from tests.review.rows import FLOOR, THRESHOLD, row

DIGEST = "0123456789abcdef"
SHEET = sheet_name(1, DIGEST)
#: Every element the page is made of; a name that adds another is markup that got through.
PAGE_TAGS = {
    "html", "head", "meta", "title", "style", "body", "h1", "p", "code", "span", "table",
    "thead", "tbody", "tr", "th", "td", "nav", "a", "strong", "div", "figure", "img",
    "figcaption",
}  # fmt: skip


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: set[str] = set()
        self.images: list[dict[str, str | None]] = []
        self.links: list[str] = []
        self.metas: list[dict[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        found = dict(attrs)
        if tag == "img":
            self.images.append(found)
        elif tag == "a" and found.get("href"):
            self.links.append(found["href"] or "")
        elif tag == "meta":
            self.metas.append(found)


def _context(made, dest: str = "/data/clean", pages: int = 1) -> PageContext:
    return PageContext(
        source="/data/raw",
        dest=dest,
        method="blur",
        threshold=THRESHOLD,
        score_floor=FLOOR,
        bands=tuple(score_bands(made, FLOOR, THRESHOLD)),
        images_with_output=len(made),
        images_shown=len(made),
        images_failed=0,
        page_count=pages,
        page_size=60,
        columns=6,
    )


def _parsed(text: str) -> _Page:
    page = _Page()
    page.feed(text)
    page.close()
    return page


_names = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00/"), min_size=1
).map(lambda name: f"{name}.jpg")


@settings(max_examples=150, deadline=None)
@given(st.lists(_names, min_size=1, max_size=8, unique=True), _names)
def test_any_file_name_is_shown_as_text_and_linked_to_its_output(names, dest) -> None:
    made = [row(f"sub/{name}", misses=(0.3,)) for name in names]
    page = _parsed(page_html(1, made, _context(made, dest=dest), SHEET))
    assert page.tags <= PAGE_TAGS
    assert [image["alt"] for image in page.images] == [f"sub/{name}" for name in names]
    assert {image["src"] for image in page.images} == {SHEET}
    outputs = [unquote(link) for link in page.links]
    assert outputs == [f"../../sub/{name}" for name in names]


def test_the_page_forbids_scripts_and_shows_no_raw_markup() -> None:
    made = [row("<script>alert(1)</script>.png", faces=(0.9,), misses=(0.35, 0.2))]
    text = page_html(1, made, _context(made), SHEET)
    page = _parsed(text)
    assert "script" not in page.tags
    policy = next(m["content"] for m in page.metas if m.get("http-equiv"))
    assert "default-src 'none'" in (policy or "")
    assert "&lt;script&gt;" in text


def test_pages_link_to_each_other_and_to_their_own_sheet() -> None:
    made = [row(f"{index}.png") for index in range(3)]
    page = _parsed(page_html(2, made, _context(made, pages=3), sheet_name(2, DIGEST)))
    assert {image["src"] for image in page.images} == {sheet_name(2, DIGEST)}
    assert page_name(1) in page.links
    assert page_name(3) in page.links
    assert page_name(2) not in page.links  # the current page is not a link


def test_the_page_names_the_threshold_that_would_mask_the_nearest_misses() -> None:
    made = [row("a.png", misses=(0.36, 0.33)), row("b.png", misses=(0.12,))]
    text = page_html(1, made, _context(made), SHEET)
    assert "A threshold of 0.3 would also mask the 2 candidate(s)" in text
    assert "in 1 image(s)" in text
