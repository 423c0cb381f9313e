"""Caption sidecars never carry image data into dest: ``sanitize_sidecar`` is the gate.

The named cases are the attacks seen (LabelMe ``imageData`` of a real face photo, data URIs,
image bytes under a caption name) and the ordinary captions that must pass as before. The
properties embed real PNG/JPEG bytes at random places of random JSON documents and texts, in
every base64 form, and check the output with an oracle written apart from the implementation.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import re
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from anon_tasks.core.errors import SidecarRefusedError
from anon_tasks.datasets.captions import note_document, note_text
from anon_tasks.datasets.image_data import BASE64_RUN_LIMIT, NUMERIC_RUN_LIMIT
from anon_tasks.datasets.sidecars import MAX_JSON_DEPTH, SIDECAR_MAX_BYTES, sanitize_sidecar

NOTE = "faces are blurred"


# -- the oracle ------------------------------------------------------------------------------

_BASE64_TOKEN = re.compile(r"[A-Za-z0-9+/=_-]+")
#: What the embedded images of these tests start with: PNG, and PIL's JPEG (JFIF APP0).
_IMAGE_STARTS = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0")


def _string_groups(value: Any) -> list[str]:
    """Every key and string of a JSON document alone, and the strings of each array joined
    (a payload split over array items, whatever lies between them)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        joined = "".join(item for item in value if isinstance(item, str))
        return [joined, *(text for item in value for text in _string_groups(item))]
    if isinstance(value, dict):
        return [text for key, item in value.items() for text in [key, *_string_groups(item)]]
    return []


def leftover_image_data(texts: list[str]) -> list[str]:
    """What image data survives in ``texts``: data URIs, long base64 runs, base64 of an image.

    Whitespace and escaped line breaks are dropped first, so wrapped base64 counts as one run.
    """
    found = []
    for text in texts:
        squeezed = re.sub(r"\s+|\\[nrt]", "", text)
        lowered = squeezed.lower()
        if "data:image" in lowered or ";base64," in lowered:
            found.append("a data: URI")
        for token in _BASE64_TOKEN.findall(squeezed):
            if len(token) >= BASE64_RUN_LIMIT:
                found.append(f"a base64 run of {len(token)} characters")
            standard = token.replace("=", "").replace("-", "+").replace("_", "/")
            for offset in range(4):
                part = standard[offset:]
                decoded = base64.b64decode(part[: len(part) - len(part) % 4])
                if any(start in decoded for start in _IMAGE_STARTS):
                    found.append("base64 of an image")
    return found


def leftover_in_output(relative_path: str, output: bytes) -> list[str]:
    text = output.decode("utf-8")
    if relative_path.endswith(".json"):
        return leftover_image_data(_string_groups(json.loads(text)))
    return leftover_image_data([text])


# -- real images -----------------------------------------------------------------------------


def encode(array: np.ndarray, image_format: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, image_format)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def astronaut_jpeg(astronaut_rgb) -> bytes:
    return encode(astronaut_rgb, "JPEG")


@pytest.fixture(scope="module")
def astronaut_b64(astronaut_jpeg) -> str:
    return base64.b64encode(astronaut_jpeg).decode("ascii")


def labelme(image_data: str | None) -> dict[str, Any]:
    """A LabelMe annotation of the astronaut's face, as LabelMe 5 writes it."""
    return {
        "version": "5.4.1",
        "flags": {},
        "shapes": [
            {
                "label": "face",
                "points": [[165.0, 50.0], [265.0, 180.0]],
                "group_id": None,
                "description": "Eileen Collins",
                "shape_type": "rectangle",
                "flags": {},
            }
        ],
        "imagePath": "astronaut.jpg",
        "imageData": image_data,
        "imageHeight": 512,
        "imageWidth": 512,
    }


# -- JSON: image data is removed, the rest kept ----------------------------------------------


def test_labelme_json_loses_the_astronaut_photo_and_keeps_its_shapes(astronaut_b64) -> None:
    content = json.dumps(labelme(astronaut_b64)).encode()
    assert leftover_in_output("a.json", content)  # the oracle sees the photo in the source

    output = sanitize_sidecar("astronaut.json", content)

    assert json.loads(output) == labelme(None)
    assert astronaut_b64[:64].encode() not in output
    assert leftover_in_output("a.json", output) == []


@pytest.mark.parametrize(
    "hide",
    [
        pytest.param(lambda b64: {"blob": b64}, id="plain base64 under an unknown key"),
        pytest.param(
            lambda b64: {"x": [1, {"y": f"see data:image/jpeg;base64,{b64}"}]}, id="data URI"
        ),
        pytest.param(
            lambda b64: {"notes": base64.encodebytes(base64.b64decode(b64)).decode()},
            id="MIME-wrapped",
        ),
        pytest.param(
            lambda b64: {"u": b64.replace("+", "-").replace("/", "_").rstrip("=")},
            id="base64url",
        ),
        pytest.param(lambda b64: {b64: "x"}, id="as a key"),
        pytest.param(
            lambda b64: {"Image_Bytes": b64[400:440], "thumbnail-small": [1, 2, 3]},
            id="image keys, any value",
        ),
    ],
)
def test_the_photo_hidden_anywhere_in_json_is_removed(astronaut_b64, hide) -> None:
    document = {"caption": "an astronaut", "extra": hide(astronaut_b64)}

    output = sanitize_sidecar("a.json", json.dumps(document).encode(), NOTE)

    assert leftover_in_output("a.json", output) == []
    assert astronaut_b64[:40].encode() not in output
    assert astronaut_b64[400:440].encode() not in output
    cleaned = json.loads(output)
    assert cleaned["caption"] == f"an astronaut, {NOTE}"
    assert cleaned.keys() == document.keys()


def test_a_thumbnail_below_the_run_limit_is_removed() -> None:
    tiny = encode(np.full((2, 2, 3), 200, np.uint8), "PNG")
    b64 = base64.b64encode(tiny).decode()
    assert len(b64) < BASE64_RUN_LIMIT

    output = sanitize_sidecar("a.json", json.dumps({"t": "a " + b64, "caption": "x"}).encode())

    assert json.loads(output) == {"t": None, "caption": "x"}


def test_raw_pixels_of_a_face_are_removed_but_polygons_and_embeddings_kept(astronaut_rgb) -> None:
    face = np.asarray(Image.fromarray(astronaut_rgb[30:200, 150:280]).convert("L").resize((48, 48)))
    polygon = [[i % 256, i * 7 % 256] for i in range(NUMERIC_RUN_LIMIT)]  # 8-bit pairs
    embedding = [0.125 * (i % 9) - 0.5 for i in range(NUMERIC_RUN_LIMIT)]
    document = {
        "rows": face.tolist(),
        "flat": face.ravel().tolist(),
        "text": " ".join(map(str, face.ravel())),
        "points": polygon,
        "embedding": embedding,
    }

    cleaned = json.loads(sanitize_sidecar("a.json", json.dumps(document).encode()))

    assert cleaned == {**document, "rows": None, "flat": None, "text": None}


def test_duplicate_keys_cannot_smuggle_the_photo(astronaut_b64) -> None:
    content = f'{{"imageData": "{astronaut_b64}", "imageData": null, "caption": "x"}}'.encode()

    output = sanitize_sidecar("a.json", content)

    assert json.loads(output) == {"imageData": None, "caption": "x"}
    assert leftover_in_output("a.json", output) == []
    assert astronaut_b64[:64].encode() not in output


def test_a_photo_split_over_json_strings_is_refused(astronaut_b64) -> None:
    chunks = [astronaut_b64[i : i + 76] for i in range(0, len(astronaut_b64), 76)]
    assert max(map(len, chunks)) < BASE64_RUN_LIMIT

    with pytest.raises(SidecarRefusedError, match="several JSON values"):
        sanitize_sidecar("a.json", json.dumps({"caption": "x", "parts": chunks}).encode())
    interleaved = [item for chunk in chunks for item in (chunk, 0, None, {"i": True})]
    with pytest.raises(SidecarRefusedError, match="several JSON values"):
        sanitize_sidecar("a.json", json.dumps({"caption": "x", "parts": interleaved}).encode())


def test_hex_ids_digests_and_long_labels_are_kept() -> None:
    document = {
        "caption": "a portrait",
        "ids": [f"3f2c1a4e-1234-4abc-9def-0123456789{i:02x}" for i in range(40)],
        "digests": ["9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"] * 8,
        "tags": ["looking_at_viewer", "simple_background", "white_background_with_shadow"] * 20,
    }
    content = json.dumps(document).encode()

    assert json.loads(sanitize_sidecar("a.json", content)) == document


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"{broken", "not valid JSON"),
        (b"", "not valid JSON"),
        (b'{"a": NaN}', "not valid JSON"),
        (b'{"a": 1e999}', "not valid JSON"),
        (b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1), "nested deeper"),
        (b"[" * 100_000 + b"]" * 100_000, "nested deeper"),
        (b'{"caption": "\\ud800"}', "not valid Unicode"),
    ],
)
def test_unusable_json_is_refused(content, reason) -> None:
    with pytest.raises(SidecarRefusedError, match=reason) as caught:
        sanitize_sidecar("a.json", content)
    assert caught.value.source == "a.json"


def test_json_as_deep_as_allowed_is_accepted() -> None:
    content = b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH
    assert json.loads(sanitize_sidecar("a.json", content)) == json.loads(content)


# -- text: refused when it carries image data -----------------------------------------------


@pytest.mark.parametrize(
    "uri",
    [
        "data:image/png;base64,iVBORw0KGgo=",
        "DATA:IMAGE/JPEG;BASE64,/9j/4AAQ",
        "d a t a : i m a g e / png;base64,AAAA",
        "data\u200b:\u200bimage/webp,xyz",
        "data:application/octet-stream;base64,AAAA",
        "data%3Aimage%2Fpng;base64,AAAA",
        "data:\\nimage/png;base64,AAAA",
    ],
)
@pytest.mark.parametrize("name", ["a.txt", "a.caption"])
def test_text_with_a_data_uri_is_refused(name, uri) -> None:
    with pytest.raises(SidecarRefusedError, match="data: URI") as caught:
        sanitize_sidecar(name, f"a photo of a man {uri} smiling".encode())
    assert caught.value.source == name
    assert uri not in caught.value.reason


def test_mime_wrapped_base64_in_text_is_refused(astronaut_jpeg) -> None:
    wrapped = base64.encodebytes(astronaut_jpeg).replace(b"\n", b"\r\n")
    assert max(map(len, wrapped.splitlines())) < BASE64_RUN_LIMIT  # no single line is long

    with pytest.raises(SidecarRefusedError, match="base64 run"):
        sanitize_sidecar("a.txt", b"an astronaut\r\n" + wrapped)


@pytest.mark.parametrize("separator", [", ", '", "', "\n", " | ", "\\n"])
def test_headless_base64_chunks_in_text_are_refused(astronaut_b64, separator) -> None:
    """Without its first line the JPEG has no signature, yet a standard header makes it whole."""
    chunks = [astronaut_b64[i : i + 76] for i in range(76, len(astronaut_b64), 76)]

    with pytest.raises(SidecarRefusedError, match="base64 run"):
        sanitize_sidecar("a.caption", f"[{separator.join(chunks)}]".encode())


@pytest.mark.parametrize("image_format", ["JPEG", "PNG", "GIF", "WEBP", "TIFF", "BMP"])
@pytest.mark.parametrize("name", ["a.txt", "a.caption", "a.json"])
def test_image_bytes_under_a_caption_name_are_refused(astronaut_rgb, name, image_format) -> None:
    content = encode(astronaut_rgb[:64, :64], image_format)

    with pytest.raises(SidecarRefusedError, match=f"is a {image_format} image"):
        sanitize_sidecar(name, content)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"caf\xe9 au lait", "not UTF-8"),
        (b"\xff\xfea\x00", "not UTF-8"),
        (b"a photo\x00of a man", "control character U\\+0000"),
        (b"a photo \x1b[31m", "control character U\\+001B"),
        ("a photo \x85".encode(), "control character U\\+0085"),
        (" ".join(["128"] * NUMERIC_RUN_LIMIT).encode(), "numbers"),
    ],
)
def test_text_that_is_not_a_caption_is_refused(content, reason) -> None:
    with pytest.raises(SidecarRefusedError, match=reason):
        sanitize_sidecar("a.txt", content)


def test_a_sidecar_over_the_size_limit_is_refused() -> None:
    at_limit = b"a photo of a man. " * (SIDECAR_MAX_BYTES // 18) + b"x" * (SIDECAR_MAX_BYTES % 18)
    assert len(at_limit) == SIDECAR_MAX_BYTES
    assert sanitize_sidecar("a.txt", at_limit) == at_limit

    with pytest.raises(SidecarRefusedError, match="more than the"):
        sanitize_sidecar("a.txt", at_limit + b".")


# -- ordinary captions pass as before ---------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        b"a photo of a man\n",
        b"",
        "Ein Foto, caf\u00e9 \u2615 \u65e5\u672c\u8a9e\tok\r\n".encode(),
        b"\xef\xbb\xbfa photo with a BOM",
        b"1girl, solo, looking_at_viewer, simple_background, upper_body, smile",
        b"see https://example.com/photos/2024/astronaut.jpg and/or data: none",
        b"BMW parked in front of a house, sunny day",
    ],
)
@pytest.mark.parametrize("name", ["a.txt", "a.caption", "x/y.TXT"])
def test_an_ordinary_caption_is_copied_byte_for_byte(name, content) -> None:
    assert sanitize_sidecar(name, content) == content
    assert sanitize_sidecar(name, content, None) == content


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("a.txt", b"a photo of a man\n", b"a photo of a man, faces are blurred\n"),
        ("a.caption", b"portrait.", b"portrait. faces are blurred"),
        ("a.txt", b"", b"faces are blurred"),
        ("a.txt", b"man, faces are blurred", b"man, faces are blurred"),
        ("a.txt", b"man, faces are blurred\n", b"man, faces are blurred\n"),
        ("a.txt", b"\xef\xbb\xbfa man", b"\xef\xbb\xbfa man, faces are blurred"),
    ],
)
def test_caption_note_in_text_sidecars(name, content, expected) -> None:
    assert sanitize_sidecar(name, content, NOTE) == expected


def test_caption_note_in_json_sidecars() -> None:
    noted = sanitize_sidecar("a.json", b'{"caption": "a man", "id": 3}', NOTE)
    assert json.loads(noted) == {"caption": "a man, faces are blurred", "id": 3}
    assert json.loads(sanitize_sidecar("a.json", b'{"text": "x", "prompt": "y"}', NOTE)) == {
        "text": f"x, {NOTE}",
        "prompt": "y",
    }
    assert json.loads(sanitize_sidecar("a.json", b'{"labels": ["x"]}', NOTE)) == {"labels": ["x"]}
    assert json.loads(sanitize_sidecar("a.json", b"\xef\xbb\xbf[1, 2.5]")) == [1, 2.5]


def test_nothing_of_the_content_is_logged(caplog, astronaut_b64) -> None:
    caplog.set_level(logging.DEBUG, logger="anon_tasks")
    sanitize_sidecar("a.json", json.dumps(labelme(astronaut_b64)).encode(), NOTE)
    with pytest.raises(SidecarRefusedError) as caught:
        sanitize_sidecar("a.txt", f"secret caption {astronaut_b64}".encode(), NOTE)

    assert astronaut_b64[:16] not in str(caught.value)
    assert astronaut_b64[:16] not in caplog.text
    assert "Eileen" not in caplog.text
    assert "secret" not in caplog.text


# -- properties -------------------------------------------------------------------------------

#: Benign text: no ':' or ';' (no data: URIs), none of '+/=_-'; every string ends in '!', so
#: the oracle's joined strings never form a long run out of benign parts.
_BENIGN_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,!?\u00e9\u65e5"
benign_strings = st.text(_BENIGN_ALPHABET, max_size=30).map(lambda s: s + "!")
benign_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**9), 10**9),
    st.floats(-1e6, 1e6, allow_nan=False),
    benign_strings,
)
json_trees = st.recursive(
    benign_leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(benign_strings, children, max_size=4)
    ),
    max_leaves=12,
)
key_names = st.one_of(
    st.sampled_from(["imageData", "image_data", "thumbnail", "blob", "caption", "data", "img"]),
    benign_strings,
)


@st.composite
def image_bytes(draw) -> bytes:
    """A real PNG or JPEG of a small random array."""
    height, width = draw(st.integers(1, 24)), draw(st.integers(1, 24))
    mode = draw(st.sampled_from(["RGB", "L"]))
    shape = (height, width, 3) if mode == "RGB" else (height, width)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    pixels = rng.integers(0, 256, shape, dtype=np.uint8)
    return encode(pixels, draw(st.sampled_from(["PNG", "JPEG"])))


ENCODINGS = ("base64", "base64url", "mime", "mime-crlf", "data-uri", "spaced-data-uri", "split")


@st.composite
def payloads(draw) -> tuple[str | list[str], str]:
    """An image encoded one way, inside benign text; ``split`` gives a list of 76-char chunks."""
    data = draw(image_bytes())
    encoding = draw(st.sampled_from(ENCODINGS))
    b64 = base64.b64encode(data).decode()
    if encoding == "split":
        return [b64[i : i + 76] for i in range(0, len(b64), 76)], encoding
    encoded = {
        "base64": b64,
        "base64url": base64.urlsafe_b64encode(data).decode().rstrip("="),
        "mime": base64.encodebytes(data).decode(),
        "mime-crlf": base64.encodebytes(data).decode().replace("\n", "\r\n"),
        "data-uri": f"data:image/png;base64,{b64}",
        "spaced-data-uri": f"DATA : Image/jpeg ; base64 , {b64}",
    }[encoding]
    prefix = draw(st.text(_BENIGN_ALPHABET, max_size=12))
    suffix = draw(st.text(_BENIGN_ALPHABET, max_size=12))
    return prefix + encoded + suffix, encoding


def insert(draw, node: Any, payload: str | list[str]) -> Any:
    """``node`` with ``payload`` put at a random place: a new value, list item or key."""
    if isinstance(node, dict) and node and draw(st.booleans()):
        key = draw(st.sampled_from(sorted(node)))
        node[key] = insert(draw, node[key], payload)
        return node
    if isinstance(node, list) and node and draw(st.booleans()):
        index = draw(st.integers(0, len(node) - 1))
        node[index] = insert(draw, node[index], payload)
        return node
    if isinstance(node, dict):
        if isinstance(payload, str) and draw(st.booleans()):
            node[payload] = draw(benign_leaves)
        else:
            node[draw(key_names)] = payload
        return node
    if isinstance(node, list):
        node.insert(draw(st.integers(0, len(node))), payload)
        return node
    return draw(st.sampled_from([[node, payload], {"caption": node, "image": payload}, payload]))


@st.composite
def documents_with_images(draw) -> tuple[Any, set[str]]:
    tree = draw(json_trees)
    encodings = set()
    for _ in range(draw(st.integers(1, 3))):
        payload, encoding = draw(payloads())
        tree = insert(draw, tree, payload)
        encodings.add(encoding)
    return tree, encodings


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents_with_images(), st.sampled_from([None, NOTE]))
def test_no_embedded_image_survives_in_json(document_and_encodings, note) -> None:
    document, encodings = document_and_encodings
    content = json.dumps(document, ensure_ascii=bool(note)).encode()
    assert leftover_image_data(_string_groups(document))  # the oracle sees what was embedded

    try:
        output = sanitize_sidecar("x/a.json", content, note)
    except SidecarRefusedError:
        # Removal handles every payload held in one value; only chunks over values may refuse.
        assert "split" in encodings
        return

    assert leftover_in_output("a.json", output) == []


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    payloads(),
    st.text(_BENIGN_ALPHABET + "\n", max_size=40),
    st.text(_BENIGN_ALPHABET + "\n", max_size=40),
    st.sampled_from([", ", "\n", '", "', " "]),
    st.sampled_from(["a.txt", "a.caption", "a.TXT"]),
    st.sampled_from([None, NOTE]),
)
def test_text_with_an_embedded_image_is_refused(
    payload_and_encoding, before, after, separator, name, note
) -> None:
    payload, _ = payload_and_encoding
    embedded = payload if isinstance(payload, str) else separator.join(payload)
    content = f"{before}{embedded}{after}".encode()
    assert leftover_image_data([content.decode()])

    with pytest.raises(SidecarRefusedError) as caught:
        sanitize_sidecar(name, content, note)
    assert caught.value.source == name


#: Words of prose are shorter than a base64 chunk; free text has no 256-character base64 run.
_WORDS = st.text(st.characters(exclude_categories=("Cc", "Cs", "Z")), min_size=1, max_size=15)
_FREE_TEXT = st.text(
    st.characters(exclude_categories=("Cc", "Cs")) | st.sampled_from("\t\n\r"), max_size=300
).filter(lambda text: not re.search(rf"[A-Za-z0-9+/=_-]{{{BASE64_RUN_LIMIT}}}", text))
benign_captions = st.one_of(
    _FREE_TEXT,
    st.lists(_WORDS, max_size=40).flatmap(
        lambda words: st.sampled_from([" ", ", ", ". ", "\n"]).map(lambda sep: sep.join(words))
    ),
)


@settings(max_examples=60, deadline=None)
@given(benign_captions, st.sampled_from(["a.txt", "a.caption"]))
def test_benign_captions_are_accepted(caption, name) -> None:
    content = caption.encode("utf-8")

    assert sanitize_sidecar(name, content) == content
    assert sanitize_sidecar(name, content, NOTE) == note_text(caption, NOTE).encode("utf-8")
    document = {"caption": caption, "tags": caption.split()[:5], "score": 0.5}
    content = json.dumps(document).encode()
    expected = json.loads(content)
    assert note_document(expected, NOTE)
    assert json.loads(sanitize_sidecar("a.json", content, NOTE)) == expected


def test_a_face_thumbnail_as_a_json_byte_array_is_removed() -> None:
    """Dataset exports write images as ``{"bytes": [255, 216, ...]}``: short, but a file."""
    import io

    from PIL import Image
    from skimage import data

    buffer = io.BytesIO()
    Image.fromarray(data.astronaut()[60:180:3, 180:270:3].copy()).save(buffer, format="JPEG")
    document = {"caption": "an astronaut", "image": {"bytes": list(buffer.getvalue())}}
    assert len(document["image"]["bytes"]) < 1024 * 4
    cleaned = json.loads(sanitize_sidecar("a.json", json.dumps(document).encode()))
    assert cleaned["image"]["bytes"] is None
    assert cleaned["caption"] == "an astronaut"
