"""Caption sidecars: checked, stripped of image data, and noted when faces were masked.

LoRA and similar trainers read ``image.txt`` / ``image.caption`` (plain text) or ``image.json``
next to each image. When faces in an image were hidden, a note such as "faces are blurred" in its
caption keeps the model from learning that people have no faces.

A sidecar can also carry the very photo whose faces were masked: LabelMe writes the whole image
as base64 ``imageData``, other tools keep thumbnails or ``data:image/...`` URIs. Copying such a
file would put the unmasked faces in dest, so ``sanitize_sidecar`` is the single gate every
sidecar passes before it is written:

* any sidecar: at most ``SIDECAR_MAX_BYTES``, and not an image file under a caption name;
* text (``.txt``, ``.caption``, any suffix but ``.json``): UTF-8 (a BOM is fine) without control
  characters other than tab, CR and LF, and without image data (below). Text cannot be cleaned
  in part, so such a file is refused; otherwise its bytes are copied unchanged (plus the note);
* JSON (``.json``): parsed (at most ``MAX_JSON_DEPTH`` levels deep); every value that is or holds
  image data is replaced by ``null`` (the value LabelMe itself writes when ``imageData`` is
  absent), every entry whose *key* holds image data is deleted, and the rest (labels, shapes,
  captions) is kept. The document is always written anew (UTF-8, indent 2), so nothing outside
  the parsed values (duplicate keys, whitespace) reaches dest. After cleaning, the keys and
  strings that are nothing but base64 are checked once more as one text, one per line, in
  document order (whatever lies between them left out), and the sidecar is refused if a long
  run shows there: a payload split over several values.

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
text...) is not. Nothing of a
sidecar's content is ever logged.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
import re
from pathlib import PurePosixPath
from typing import Any, Final, NoReturn

from anon_tasks.core.errors import SidecarRefusedError
from anon_tasks.core.formats import SNIFF_BYTES, sniff_image_format

__all__ = [
    "BASE64_CHUNK_MIN",
    "BASE64_RUN_LIMIT",
    "IMAGE_DATA_KEYS",
    "JSON_CAPTION_KEYS",
    "MAX_JSON_DEPTH",
    "NUMERIC_RUN_LIMIT",
    "SIDECAR_MAX_BYTES",
    "add_caption_note",
    "sanitize_sidecar",
]

logger = logging.getLogger(__name__)

#: Keys of a JSON sidecar that hold the caption text, in the order they are looked for.
JSON_CAPTION_KEYS = ("caption", "text", "prompt")

#: Largest sidecar accepted, in bytes (1 MiB); captions are far smaller, embedded photos are not.
SIDECAR_MAX_BYTES: Final = 1 << 20
#: Base64/base64url characters in one run (wrapped or not) that make it image data: 256
#: characters are 192 bytes, less than the headers of any JPEG.
BASE64_RUN_LIMIT: Final = 256
#: Shortest chunk that joins a wrapped base64 run; words of prose are shorter.
BASE64_CHUNK_MIN: Final = 16
#: Numbers in one run of text, or 8-bit samples in one JSON array, that make it raw pixel data
#: (a 32x32 grayscale face; a caption never holds that many numbers in a row).
NUMERIC_RUN_LIMIT: Final = 1024
#: Deepest nesting of arrays and objects accepted in a JSON sidecar.
MAX_JSON_DEPTH: Final = 64
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

#: Control characters (Unicode category Cc) other than tab, LF and CR.
_CONTROL_RE: Final = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
#: A byte no UTF-8 text without control characters has (the zeros of a BMP header).
_BINARY_BYTE_RE: Final = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
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


def _image_data_in(text: str, *, numbers: bool = True) -> str | None:
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


def _is_image_key(key: str) -> bool:
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


def _is_pixel_array(value: list[Any]) -> bool:
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


def _is_image_byte_array(value: list[Any]) -> bool:
    """Whether a flat array of 8-bit samples spells an image file (``{"bytes": [255, 216,
    ...]}``, as dataset exports write thumbnails): any length, found by its signature."""
    head = value[:SNIFF_BYTES]
    if len(head) < 4 or not all(_is_sample(item) for item in head):
        return False
    return sniff_image_format(bytes(int(item) for item in head)) is not None


def _depth(document: Any) -> int:
    """How deeply arrays and objects nest in ``document`` (0 for a scalar)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(document, 0)]
    while stack:
        value, level = stack.pop()
        if isinstance(value, dict):
            children: Any = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        deepest = max(deepest, level + 1)
        if deepest > MAX_JSON_DEPTH:
            break
        stack.extend((child, level + 1) for child in children)
    return deepest


def _strip_images(value: Any, removed: list[int]) -> Any:
    """``value`` with its image data replaced by None; ``removed[0]`` counts what went."""
    if isinstance(value, str):
        if _image_data_in(value) is not None:
            removed[0] += 1
            return None
        return value
    if isinstance(value, list):
        if _is_pixel_array(value) or _is_image_byte_array(value):
            removed[0] += 1
            return None
        return [_strip_images(item, removed) for item in value]
    if isinstance(value, dict):
        cleaned: dict[str, Any] = {}
        for key, item in value.items():
            if _image_data_in(key) is not None:
                removed[0] += 1
            elif _is_image_key(key) and item is not None:
                removed[0] += 1
                cleaned[key] = None
            else:
                cleaned[key] = _strip_images(item, removed)
        return cleaned
    return value


def _strings_in(value: Any) -> list[str]:
    """The keys and strings of a JSON document, in document order."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [text for item in value for text in _strings_in(item)]
    if isinstance(value, dict):
        return [text for key, item in value.items() for text in (key, *_strings_in(item))]
    return []


def _is_base64_piece(text: str) -> bool:
    """Whether a JSON string could be one piece of a payload split over values: nothing but
    base64 (wrapped or not), with at least one chunk of ``BASE64_CHUNK_MIN`` characters."""
    unwrapped = _GAP_RE.sub("\n", text)
    return bool(_PIECE_RE.fullmatch(unwrapped)) and _CHUNK_RE.search(unwrapped) is not None


def _append(text: str, note: str) -> str:
    stripped = text.rstrip()
    if not stripped:
        return note
    if note.lower() in stripped.lower():
        return text  # already noted (e.g. a caption written by an earlier pipeline step)
    separator = " " if stripped.endswith((".", ",", ";")) else ", "
    return f"{stripped}{separator}{note}"


def _note_text(text: str, note: str) -> str:
    """A text caption with ``note`` appended; a leading BOM and a final line break are kept."""
    bom = "\ufeff" if text.startswith("\ufeff") else ""
    body = text[len(bom) :]
    if body.rstrip() and note.lower() in body.lower():
        return text  # already noted
    return bom + _append(body, note) + ("\n" if text.endswith("\n") else "")


def _note_document(document: Any, note: str) -> bool:
    """Append ``note`` to the first caption field of a JSON object; whether there was one."""
    if isinstance(document, dict):
        for key in JSON_CAPTION_KEYS:
            if isinstance(document.get(key), str):
                document[key] = _append(document[key], note)
                return True
    return False


def add_caption_note(relative_path: str, content: bytes, note: str) -> bytes:
    """``content`` of a caption sidecar with ``note`` appended to its caption text.

    Text sidecars get the note after the caption (", " between them); a JSON sidecar gets it in
    its first caption field. A file that cannot be read as such is returned unchanged. This only
    adds the note: content bound for dest must go through ``sanitize_sidecar``.
    """
    suffix = PurePosixPath(relative_path).suffix.lower()
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        logger.warning("%s: caption is not UTF-8; left as it is", relative_path)
        return content
    if suffix != ".json":
        return _append(text, note).encode("utf-8") + (b"\n" if text.endswith("\n") else b"")
    try:
        document = json.loads(text)
    except json.JSONDecodeError:
        logger.warning("%s: caption is not valid JSON; left as it is", relative_path)
        return content
    if _note_document(document, note):
        return json.dumps(document, ensure_ascii=False, indent=2).encode("utf-8")
    logger.warning("%s: no caption field in the JSON sidecar; left as it is", relative_path)
    return content


def _refuse_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def _finite_float(literal: str) -> float:
    number = float(literal)
    if not math.isfinite(number):
        raise ValueError("number out of range")
    return number


def _sniffed_image(content: bytes) -> str | None:
    """The image format ``content`` starts with, or None. "BM" alone is text ("BMW ..."): a
    BMP counts only when its 18-byte header is binary, as the real one (zero bytes) is."""
    head = content[:SNIFF_BYTES]
    image_format = sniff_image_format(head)
    if image_format == "BMP" and not _BINARY_BYTE_RE.search(head[:18]):
        return None
    return image_format


def _sanitize_text(relative_path: str, text: str, note: str | None) -> str:
    control = _CONTROL_RE.search(text)
    if control is not None:
        raise SidecarRefusedError(
            f"control character U+{ord(control.group()):04X} in a text caption",
            source=relative_path,
        )
    reason = _image_data_in(text)
    if reason is not None:
        raise SidecarRefusedError(reason, source=relative_path)
    return _note_text(text, note) if note else text


def _sanitize_json(relative_path: str, text: str, note: str | None) -> str:
    try:
        document = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        raise SidecarRefusedError(
            f"JSON nested deeper than {MAX_JSON_DEPTH} levels", source=relative_path
        ) from None
    except ValueError as exc:  # JSONDecodeError, NaN/Infinity, numbers out of range
        raise SidecarRefusedError(f"not valid JSON ({exc})", source=relative_path) from None
    if _depth(document) > MAX_JSON_DEPTH:
        raise SidecarRefusedError(
            f"JSON nested deeper than {MAX_JSON_DEPTH} levels", source=relative_path
        )
    removed = [0]
    document = _strip_images(document, removed)
    if removed[0]:
        logger.info(
            "%s: removed %d embedded image value(s) from the JSON sidecar",
            relative_path,
            removed[0],
        )
    pieces = [piece for piece in _strings_in(document) if _is_base64_piece(piece)]
    reason = _image_data_in("\n".join(pieces), numbers=False)
    if reason is not None:
        raise SidecarRefusedError(
            f"{reason} across several JSON values; cannot be removed", source=relative_path
        )
    if note:
        _note_document(document, note)
    return json.dumps(document, ensure_ascii=False, indent=2)


def sanitize_sidecar(relative_path: str, content: bytes, note: str | None = None) -> bytes:
    """The bytes of a caption sidecar to write in dest: checked, without image data, noted.

    The rules are in the module docstring. A text sidecar comes back byte for byte when it is
    accepted and no note is given; a JSON sidecar is always written anew, its image data
    replaced by ``null``.

    Args:
        relative_path: The sidecar's path relative to its root; its suffix (``.json`` or not)
            picks the rules, and it names the file in errors and logs.
        content: The sidecar's bytes as read from the source.
        note: Text to append to the caption (after the text, or in the first of
            ``JSON_CAPTION_KEYS``), or None to add nothing.

    Returns:
        The UTF-8 bytes to write beside the masked image.

    Raises:
        SidecarRefusedError: The sidecar must not be copied: too large, an image file, not
            UTF-8, control characters, invalid or too deeply nested JSON, or image data that
            cannot be removed (any in a text sidecar). ``reason`` says which, without content.
    """
    if len(content) > SIDECAR_MAX_BYTES:
        raise SidecarRefusedError(
            f"{len(content)} bytes, more than the {SIDECAR_MAX_BYTES} allowed for a sidecar",
            source=relative_path,
        )
    image_format = _sniffed_image(content)
    if image_format is not None:
        raise SidecarRefusedError(f"is a {image_format} image, not a caption", source=relative_path)
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        raise SidecarRefusedError("not UTF-8 text", source=relative_path) from None
    if PurePosixPath(relative_path).suffix.lower() == ".json":
        output = _sanitize_json(relative_path, text.removeprefix("\ufeff"), note)
    else:
        output = _sanitize_text(relative_path, text, note)
        if output is text:
            return content
    try:
        return output.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from a JSON \ud800 escape
        raise SidecarRefusedError("not valid Unicode text", source=relative_path) from None
