"""Caption sidecars: copied beside their image, with a note when faces were masked.

LoRA and similar trainers read ``image.txt`` / ``image.caption`` (plain text) or ``image.json``
next to each image. When faces in an image were hidden, a note such as "faces are blurred" in its
caption keeps the model from learning that people have no faces.
"""

from __future__ import annotations

import json
import logging
from pathlib import PurePosixPath

__all__ = ["JSON_CAPTION_KEYS", "add_caption_note"]

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


def add_caption_note(relative_path: str, content: bytes, note: str) -> bytes:
    """``content`` of a caption sidecar with ``note`` appended to its caption text.

    Text sidecars get the note after the caption (", " between them); a JSON sidecar gets it in
    its first caption field. A file that cannot be read as such is returned unchanged.
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
    if isinstance(document, dict):
        for key in JSON_CAPTION_KEYS:
            if isinstance(document.get(key), str):
                document[key] = _append(document[key], note)
                return json.dumps(document, ensure_ascii=False, indent=2).encode("utf-8")
    logger.warning("%s: no caption field in the JSON sidecar; left as it is", relative_path)
    return content
