"""The gate every caption sidecar passes before it is written to dest: checked and stripped
of image data.

A sidecar can carry the very photo whose faces were masked: LabelMe writes the whole image as
base64 ``imageData``, other tools keep thumbnails or ``data:image/...`` URIs. Copying such a
file would put the unmasked faces in dest, so ``sanitize_sidecar`` is the single gate:

* any sidecar: at most ``SIDECAR_MAX_BYTES``, and not an image file under a caption name;
* text (``.txt``, ``.caption``, any suffix but ``.json``): UTF-8 (a BOM is fine) without control
  characters other than tab, CR and LF, and without image data (``image_data``). Text cannot be
  cleaned in part, so such a file is refused; otherwise its bytes are copied unchanged (plus the
  note);
* JSON (``.json``): parsed (at most ``MAX_JSON_DEPTH`` levels deep); every value that is or holds
  image data is replaced by ``null`` (the value LabelMe itself writes when ``imageData`` is
  absent), every entry whose *key* holds image data is deleted, and the rest (labels, shapes,
  captions) is kept. The document is always written anew (UTF-8, indent 2), so nothing outside
  the parsed values (duplicate keys, whitespace) reaches dest. After cleaning, the keys and
  strings that are nothing but base64 are checked once more as one text, one per line, in
  document order (whatever lies between them left out), and the sidecar is refused if a long
  run shows there: a payload split over several values.

Nothing of a sidecar's content is ever logged.
"""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import PurePosixPath
from typing import Any, Final, NoReturn

from anon_tasks.core.errors import SidecarRefusedError
from anon_tasks.core.formats import SNIFF_BYTES, sniff_image_format
from anon_tasks.datasets.captions import note_document, note_text
from anon_tasks.datasets.image_data import (
    image_data_in,
    is_base64_piece,
    is_image_byte_array,
    is_image_key,
    is_pixel_array,
)

__all__ = ["MAX_JSON_DEPTH", "SIDECAR_MAX_BYTES", "sanitize_sidecar"]

logger = logging.getLogger(__name__)


#: Largest sidecar accepted, in bytes (1 MiB); captions are far smaller, embedded photos are not.
SIDECAR_MAX_BYTES: Final = 1 << 20
#: Deepest nesting of arrays and objects accepted in a JSON sidecar.
MAX_JSON_DEPTH: Final = 64

#: Control characters (Unicode category Cc) other than tab, LF and CR.
_CONTROL_RE: Final = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
#: A byte no UTF-8 text without control characters has (the zeros of a BMP header).
_BINARY_BYTE_RE: Final = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


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
        if image_data_in(value) is not None:
            removed[0] += 1
            return None
        return value
    if isinstance(value, list):
        if is_pixel_array(value) or is_image_byte_array(value):
            removed[0] += 1
            return None
        return [_strip_images(item, removed) for item in value]
    if isinstance(value, dict):
        cleaned: dict[str, Any] = {}
        for key, item in value.items():
            if image_data_in(key) is not None:
                removed[0] += 1
            elif is_image_key(key) and item is not None:
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
    reason = image_data_in(text)
    if reason is not None:
        raise SidecarRefusedError(reason, source=relative_path)
    return note_text(text, note) if note else text


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
    pieces = [piece for piece in _strings_in(document) if is_base64_piece(piece)]
    reason = image_data_in("\n".join(pieces), numbers=False)
    if reason is not None:
        raise SidecarRefusedError(
            f"{reason} across several JSON values; cannot be removed", source=relative_path
        )
    if note:
        note_document(document, note)
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
