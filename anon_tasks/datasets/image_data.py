"""Recognising image data inside the text of a caption sidecar and the values of a JSON one.

"Image data" in a string is any of:

* a ``data:`` URI of an image or of base64 content (``data:image/...``, ``data:...;base64,``),
  case-insensitive, with whitespace, zero-width characters or escapes between its letters;
* a base64 or base64url run of ``BASE64_RUN_LIMIT`` characters or more. A run may be wrapped:
  chunks of at least ``BASE64_CHUNK_MIN`` characters separated by whitespace, line breaks
  (real or as ``\\n`` escapes), quotes, commas or brackets count together, so MIME's 76-character
  lines (which a per-line rule misses) and chunks in consecutive JSON strings are caught, while
  prose (words are shorter than ``BASE64_CHUNK_MIN``) is not. Chunks join only when each
  mixes upper- and lower-case letters, as base64 of binary data does, so a list of hex ids
  (UUIDs, digests) is not taken for an image; an unbroken run counts whatever its letters;
* a base64 token of any length that decodes to an image signature (a thumbnail too small for the
  run limit), at any of the four base64 alignments;
* a run of ``NUMERIC_RUN_LIMIT`` numbers or more (raw pixels written out as text).

In JSON, these are also image data: the value of a key named like image content (see
``IMAGE_DATA_KEYS``; case, ``_``, ``-`` and spaces ignored), and an array of 8-bit samples
(integral numbers 0-255, or arrays of them) holding ``NUMERIC_RUN_LIMIT`` of them or more,
unless it is a list of coordinate pairs (polygon points). Arrays of other numbers (embeddings,
float polygons) are kept.

Limits: only base64 (and unbroken hex, whose digits are in its alphabet), data URIs and numbers
are recognised; an image re-encoded some other way (hex split over lines or values, base32768
text...) is not.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any, Final

from anon_tasks.core.formats import SNIFF_BYTES, sniff_image_format

__all__ = [
    "BASE64_CHUNK_MIN",
    "BASE64_RUN_LIMIT",
    "IMAGE_DATA_KEYS",
    "NUMERIC_RUN_LIMIT",
    "image_data_in",
    "is_base64_piece",
    "is_image_byte_array",
    "is_image_key",
    "is_pixel_array",
]

#: Base64/base64url characters in one run (wrapped or not) that make it image data: 256
#: characters are 192 bytes, less than the headers of any JPEG.
BASE64_RUN_LIMIT: Final = 256
#: Shortest chunk that joins a wrapped base64 run; words of prose are shorter.
BASE64_CHUNK_MIN: Final = 16
#: Numbers in one run of text, or 8-bit samples in one JSON array, that make it raw pixel data
#: (a 32x32 grayscale face; a caption never holds that many numbers in a row).
NUMERIC_RUN_LIMIT: Final = 1024
#: JSON keys whose value is image content whatever its form, compared lower-case without ``_``,
#: ``-``, ``.`` or spaces (``imageData``, ``image_data``, ``b64_json``...). Keys ending in
#: ``base64`` or ``b64`` and keys starting with ``thumbnail`` count too.
IMAGE_DATA_KEYS: Final = frozenset(
    {
        "imagedata",
        "imagebytes",
        "imagebase64",
        "imageb64",
        "imageblob",
        "imagecontent",
        "imageencoded",
        "imagepixels",
        "imagearray",
        "imagebuffer",
        "imgdata",
        "imgbytes",
        "imgblob",
        "encodedimage",
        "rawimage",
        "pixels",
        "pixeldata",
        "thumb",
        "thumbdata",
        "previewimage",
        "previewdata",
        "b64json",
    }
)
_IMAGE_KEY_SUFFIXES: Final = ("base64", "b64")
_IMAGE_KEY_PREFIXES: Final = ("thumbnail",)

_BASE64_CHARS: Final = "A-Za-z0-9+/=_-"
#: What may separate the chunks of a wrapped base64 run (and hide inside ``data:``).
_GAP: Final = r"(?:[\s,;|\"'`()\[\]{}:\u00ad\u200b-\u200d\u2060\ufeff]|\\[nrt]|\\u[0-9a-fA-F]{4})+"
_CHUNK: Final = rf"[{_BASE64_CHARS}]{{{BASE64_CHUNK_MIN},}}"
_RUN_RE: Final = re.compile(rf"{_CHUNK}(?:{_GAP}{_CHUNK})*")
_GAP_RE: Final = re.compile(_GAP)
_CHUNK_RE: Final = re.compile(_CHUNK)
_PIECE_RE: Final = re.compile(rf"[\n{_BASE64_CHARS}]*")
_TOKEN_RE: Final = re.compile(r"[A-Za-z0-9+/_-]{8,}")
_NUMBER: Final = r"-?[0-9]+(?:\.[0-9]+)?"
_NUMBERS_RE: Final = re.compile(rf"{_NUMBER}(?:[\s,;\[\]()]+{_NUMBER})*")
_NUMBER_RE: Final = re.compile(_NUMBER)
#: Filler an attacker may put between the letters of ``data:image``: whitespace, soft hyphens,
#: zero-width characters and escaped line breaks.
_FILL: Final = r"(?:\s|\\[nrt]|[\u00ad\u200b-\u200d\u2060\ufeff])*"


def _spaced(word: str) -> str:
    return _FILL.join(re.escape(letter) for letter in word)


_DATA_URI_RE: Final = re.compile(
    rf"{_spaced('data')}{_FILL}(?::|%3a|&colon;|&#0*58;){_FILL}"
    rf"(?:{_spaced('image')}{_FILL}(?:/|%2f)"  # data:image/...
    rf"|[^,]{{0,200}}?;{_FILL}{_spaced('base64')}{_FILL}(?:,|%2c))",  # data:...;base64,
    re.IGNORECASE,
)
#: Image signatures searched for anywhere in decoded base64 (a token may start before its image);
#: long enough that decoded prose or hex does not meet them by chance.
_EMBEDDED_SIGNATURE_RE: Final = re.compile(
    rb"\xff\xd8\xff[\xc0-\xfe]|\x89PNG\r\n\x1a\n|GIF8[79]a|RIFF.{4}WEBPVP8"
    rb"|ftyp(?:avif|avis|heic|heix|mif1|msf1)",
    re.DOTALL,
)
_URLSAFE_TO_STANDARD: Final = str.maketrans("-_", "+/")


def _decoded_image(token: str) -> str | None:
    """The image format a base64/base64url token decodes to (at any alignment), or None."""
    standard = token.translate(_URLSAFE_TO_STANDARD)
    for offset in range(4):
        part = standard[offset:]
        part = part[: len(part) - len(part) % 4]
        if len(part) < 4:
            break
        try:
            data = base64.b64decode(part, validate=True)
        except (binascii.Error, ValueError):
            continue
        found = sniff_image_format(data[:SNIFF_BYTES])
        if found is not None:
            return found
        if _EMBEDDED_SIGNATURE_RE.search(data):
            return "image"
    return None


def _mixes_case(chunk: str) -> bool:
    """Whether a chunk has upper- and lower-case letters, as base64 of binary data does (and
    hex, such as a UUID or a digest, does not)."""
    return any(c.isupper() for c in chunk) and any(c.islower() for c in chunk)


def _has_long_base64_run(text: str) -> bool:
    """Whether ``text`` holds an unbroken base64 run of ``BASE64_RUN_LIMIT`` characters, or
    consecutive mixed-case chunks (wrapped base64) that long together."""
    for match in _RUN_RE.finditer(text):
        length = 0
        for chunk in _GAP_RE.split(match.group()):
            length = length + len(chunk) if _mixes_case(chunk) else 0
            if len(chunk) >= BASE64_RUN_LIMIT or length >= BASE64_RUN_LIMIT:
                return True
    return False


def image_data_in(text: str, *, numbers: bool = True) -> str | None:
    """Why ``text`` carries image data (see the module docstring), or None when it does not.

    Args:
        text: The string to look at.
        numbers: Whether a long run of numbers counts (off for the joined base64 pieces of a
            JSON document, whose numbers were checked value by value).
    """
    if _DATA_URI_RE.search(text):
        return "contains a data: URI (embedded image data)"
    if _has_long_base64_run(text):
        return f"contains a base64 run of {BASE64_RUN_LIMIT}+ characters (embedded data)"
    for match in _TOKEN_RE.finditer(text):
        found = _decoded_image(match.group())
        if found is not None:
            return f"contains base64 that decodes to an image ({found})"
    if numbers:
        for match in _NUMBERS_RE.finditer(text):
            if len(_NUMBER_RE.findall(match.group())) >= NUMERIC_RUN_LIMIT:
                return f"contains a run of {NUMERIC_RUN_LIMIT}+ numbers (raw pixel data)"
    return None


def is_image_key(key: str) -> bool:
    name = re.sub(r"[\s_.\-]", "", key).lower()
    return (
        name in IMAGE_DATA_KEYS
        or name.endswith(_IMAGE_KEY_SUFFIXES)
        or name.startswith(_IMAGE_KEY_PREFIXES)
    )


def _is_sample(value: object) -> bool:
    """Whether a JSON value is an 8-bit pixel sample: an integral number from 0 to 255."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return 0 <= value <= 255 and float(value).is_integer()


def is_pixel_array(value: list[Any]) -> bool:
    """Whether ``value`` holds only 8-bit samples (or arrays of them), ``NUMERIC_RUN_LIMIT`` or
    more, and is not a list of coordinate pairs (polygon points)."""
    count = 0
    only_pairs = True
    stack: list[list[Any]] = [value]
    while stack:
        items = stack.pop()
        for item in items:
            if isinstance(item, list):
                stack.append(item)
            elif _is_sample(item):
                count += 1
            else:
                return False
        if any(not isinstance(item, list) for item in items):
            only_pairs = only_pairs and len(items) == 2
    return count >= NUMERIC_RUN_LIMIT and not only_pairs


def is_image_byte_array(value: list[Any]) -> bool:
    """Whether a flat array of 8-bit samples spells an image file (``{"bytes": [255, 216,
    ...]}``, as dataset exports write thumbnails): any length, found by its signature."""
    head = value[:SNIFF_BYTES]
    if len(head) < 4 or not all(_is_sample(item) for item in head):
        return False
    return sniff_image_format(bytes(int(item) for item in head)) is not None


def is_base64_piece(text: str) -> bool:
    """Whether a JSON string could be one piece of a payload split over values: nothing but
    base64 (wrapped or not), with at least one chunk of ``BASE64_CHUNK_MIN`` characters."""
    unwrapped = _GAP_RE.sub("\n", text)
    return bool(_PIECE_RE.fullmatch(unwrapped)) and _CHUNK_RE.search(unwrapped) is not None
