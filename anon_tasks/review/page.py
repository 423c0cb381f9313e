"""The review page's HTML: one self-contained file per page, no script, every name escaped.

Each thumbnail is a window onto the page's contact sheet (an ``<img>`` of the sheet with
``object-fit: none`` and the tile's offset), so a page is two files however many images it
shows. A content security policy allows images from the page's own folder tree and inline
styles only: a file name cannot run anything, even if it got past the escaping.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote

from anon_tasks.core.records import ManifestFace, ManifestRow
from anon_tasks.review.selection import ScoreBand
from anon_tasks.review.thumbnails import MASK_RGB, NEAR_MISS_RGB, TILE_PX, tile_origin

__all__ = ["PageContext", "page_html", "page_name", "sheet_name"]

#: Scores a caption lists, per kind.
_LISTED_SCORES = 5
_POLICY = "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'"


def page_name(number: int) -> str:
    """File name of page ``number`` (1-based): the first is ``index.html``."""
    return "index.html" if number == 1 else f"page-{number:04d}.html"


def sheet_name(number: int, digest: str) -> str:
    """File name of page ``number``'s contact sheet of the tiles ``digest`` names: a new name
    for new pictures, so a browser never shows a sheet it cached from an earlier run."""
    return f"sheet-{number:04d}-{digest}.png"


@dataclass(frozen=True)
class PageContext:
    """What every page of one review says besides its own thumbnails."""

    source: str
    dest: str
    method: str
    threshold: float
    score_floor: float
    bands: tuple[ScoreBand, ...]
    images_with_output: int
    images_shown: int
    images_failed: int
    page_count: int
    page_size: int
    columns: int


def _rgb(colour: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*colour)


def _text(value: object) -> str:
    return html.escape(str(value), quote=True)


def _output_href(output: str) -> str:
    """The output's address from ``_anonymize/review/``: two folders up, each segment quoted."""
    return "../../" + quote(output, safe="/")


def _bands_table(context: PageContext) -> str:
    rows = []
    for band in context.bands:
        what = "masked" if band.masked else "near misses, left unmasked"
        rows.append(
            f"<tr><td>{_text(band.label)}</td><td>{what}</td>"
            f"<td class=num>{band.candidates}</td><td class=num>{band.images}</td></tr>"
        )
    return (
        "<table class=bands><thead><tr><th>score</th><th></th><th>candidates</th>"
        "<th>images</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
    )


def _lower_threshold_hint(context: PageContext) -> str:
    misses = [band for band in context.bands if not band.masked and band.candidates]
    if not misses:
        return (
            "<p>No candidate scored between the score floor "
            f"({context.score_floor:g}) and the threshold ({context.threshold:g}).</p>"
        )
    top = misses[0]
    return (
        f"<p>A threshold of {top.low:g} would also mask the {top.candidates} candidate(s) "
        f"scored {_text(top.label)} in {top.images} image(s). Rerun with that threshold: "
        "the detections are cached down to the score floor, so the model does not run "
        "again.</p>"
    )


def _nav(number: int, count: int) -> str:
    if count == 1:
        return ""
    links = []
    for other in range(1, count + 1):
        if other == number:
            links.append(f"<strong>{other}</strong>")
        else:
            links.append(f'<a href="{page_name(other)}">{other}</a>')
    return "<nav>Pages: " + " ".join(links) + "</nav>"


def _scores(faces: Sequence[ManifestFace]) -> str:
    """The scores, highest first, the first ``_LISTED_SCORES`` of them."""
    ordered = sorted((face.score for face in faces), reverse=True)
    listed = ", ".join(f"{score:.2f}" for score in ordered[:_LISTED_SCORES])
    more = len(ordered) - _LISTED_SCORES
    return listed + (f" and {more} more" if more > 0 else "")


def _figure(index: int, row: ManifestRow, sheet: str, columns: int) -> str:
    x, y = tile_origin(index, columns)
    output = row.output or row.source
    misses = (
        f"<span class=miss>near misses {_scores(row.near_misses)}</span>" if row.near_misses else ""
    )
    masked = f"{len(row.faces)} masked" + (f" ({_scores(row.faces)})" if row.faces else "")
    return (
        f'<figure data-near-misses="{len(row.near_misses)}" data-masked="{len(row.faces)}">'
        f'<a href="{_text(_output_href(output))}">'
        f'<img src="{_text(sheet)}" alt="{_text(output)}" width={TILE_PX} height={TILE_PX} '
        f'style="object-position:-{x}px -{y}px"></a>'
        f"<figcaption><span class=name>{_text(output)}</span>"
        f"<span>{masked}</span>{misses}</figcaption></figure>"
    )


_STYLE = f"""
body{{font:14px/1.4 system-ui,sans-serif;margin:1.5em;background:#fafafa;color:#222}}
h1{{font-size:1.3em}} code{{background:#eee;padding:0 .2em}}
table.bands{{border-collapse:collapse;margin:.5em 0}}
.bands td,.bands th{{border:1px solid #ccc;padding:.2em .6em;text-align:left}}
.num{{text-align:right}}
.legend span{{display:inline-block;width:1em;height:.8em;margin:0 .3em 0 1em}}
.grid{{display:grid;grid-template-columns:repeat(auto-fill,{TILE_PX + 8}px);gap:8px}}
figure{{margin:0;width:{TILE_PX}px}}
figure img{{object-fit:none;background:#202020;display:block}}
figcaption{{font-size:12px;word-break:break-all}}
figcaption span{{display:block}}
.miss{{color:{_rgb(NEAR_MISS_RGB)};font-weight:600}}
nav{{margin:1em 0}}
"""


def page_html(number: int, rows: Sequence[ManifestRow], context: PageContext, sheet: str) -> str:
    """Page ``number`` (1-based) of the review, showing ``rows`` on the contact sheet named
    ``sheet`` (in the page's folder)."""
    first = (number - 1) * context.page_size + 1
    shown = (
        f"Images {first}–{first + len(rows) - 1} of the {context.images_shown} shown"
        if rows
        else "No output to show"
    )
    more = context.images_with_output - context.images_shown
    beyond = (
        f" ({more} more outputs are listed in the manifest only; see the run's review_images "
        "setting)"
        if more > 0
        else ""
    )
    failed = (
        f"<p>{context.images_failed} image(s) failed and have no output: the manifest says why.</p>"
        if context.images_failed
        else ""
    )
    figures = "".join(_figure(index, row, sheet, context.columns) for index, row in enumerate(rows))
    return f"""<!doctype html>
<html lang=en><head><meta charset=utf-8>
<meta http-equiv="Content-Security-Policy" content="{_POLICY}">
<meta name=viewport content="width=device-width">
<title>Review: {_text(context.dest)}</title><style>{_STYLE}</style></head>
<body>
<h1>Faces masked in <code>{_text(context.dest)}</code></h1>
<p>Source <code>{_text(context.source)}</code>, method {_text(context.method)}, threshold
{context.threshold:g}, candidates kept down to {context.score_floor:g}. Thumbnails are drawn
from the masked outputs only.</p>
<p class=legend><span style="background:{_rgb(MASK_RGB)}"></span>outline of a mask
<span style="background:{_rgb(NEAR_MISS_RGB)}"></span>near miss: a candidate scored below the
threshold, left unmasked, with its score</p>
{_bands_table(context)}
{_lower_threshold_hint(context)}
{failed}
<p>{shown}{beyond}; images with near misses first, the highest score first.</p>
{_nav(number, context.page_count)}
<div class=grid>{figures}</div>
{_nav(number, context.page_count)}
</body></html>
"""
