"""Caption notes: the text appended to an image's captions when faces in it were masked.

LoRA and similar trainers read ``image.txt`` / ``image.caption`` (plain text) or ``image.json``
next to each image. When faces in an image were hidden, a note such as "faces are blurred" in its
caption keeps the model from learning that people have no faces. Content bound for dest goes
through ``sidecars.sanitize_sidecar``, which adds the note itself; nothing of a caption's content
is ever logged.
"""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["JSON_CAPTION_KEYS", "note_document", "note_text"]

logger = logging.getLogger(__name__)

#: Keys of a JSON sidecar that hold the caption text, in the order they are looked for.
JSON_CAPTION_KEYS = ("caption", "text", "prompt")


def _append(text: str, note: str) -> str:
    stripped = text.rstrip()
    if not stripped:
        return note
    if note.lower() in stripped.lower():
        return text  # already noted (e.g. a caption written by an earlier pipeline step)
    separator = " " if stripped.endswith((".", ",", ";")) else ", "
    return f"{stripped}{separator}{note}"


def note_text(text: str, note: str) -> str:
    """A text caption with ``note`` appended; a leading BOM and a final line break are kept."""
    bom = "\ufeff" if text.startswith("\ufeff") else ""
    body = text[len(bom) :]
    if body.rstrip() and note.lower() in body.lower():
        return text  # already noted
    return bom + _append(body, note) + ("\n" if text.endswith("\n") else "")


def note_document(document: Any, note: str) -> bool:
    """Append ``note`` to the first caption field of a JSON object; whether there was one."""
    if isinstance(document, dict):
        for key in JSON_CAPTION_KEYS:
            if isinstance(document.get(key), str):
                document[key] = _append(document[key], note)
                return True
    return False
