"""GIF frames from pixels: palettes that keep every colour they can, alpha as on/off keys.

GIF output keeps every colour when a frame has at most 256 (255 with transparency), and
median-cut quantises otherwise; alpha becomes GIF's on/off transparency at 128. A gray still
is written with the gray ramp, so it decodes as gray again.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from anon_tasks.imaging.decoded import channel_count
from anon_tasks.imaging.layouts import in_layout_of

__all__ = ["gif_frames"]


def gif_frames(pixels: Sequence[np.ndarray]) -> tuple[list[Image.Image], bool]:
    """Palette images for GIF, one per frame, and whether they share a transparent index.

    An animation with alpha is keyed: every frame keeps index 255 transparent and entry 255
    gets a colour no visible pixel has, so Pillow's delta against the cleared canvas never
    crops one away; such frames must be written with disposal 2 (each canvas replaces the one
    before: a hidden pixel must not show the last frame).

    Args:
        pixels: The frames (an animation's canvases share one layout).

    Returns:
        The palette images, and True when they are keyed as above.
    """
    if len(pixels) > 1:
        pixels = tuple(in_layout_of(frame, "WEBP") for frame in pixels)  # canvases are RGB(A)
    keyed = len(pixels) > 1 and channel_count(pixels[0]) == 4
    frames = [_gif_palette_frame(frame, keyed=keyed) for frame in pixels]
    if keyed:
        _give_transparent_entry_an_unused_colour(frames)
    return frames, keyed


def _gif_palette_frame(frame: np.ndarray, *, keyed: bool = False) -> Image.Image:
    """One frame as a GIF palette image; alpha below 128 becomes the transparent index.

    A gray still is written with the gray ramp (so it decodes as gray again), its transparent
    index a gray level no visible pixel uses. Colour keeps its own colours when there are at
    most 256 (255 beside the transparent index 255, which ``keyed`` always reserves), else it
    is median-cut quantised.
    """
    channels = channel_count(frame)
    hidden = frame[..., -1] < 128 if channels in (2, 4) else np.zeros(frame.shape[:2], bool)
    if channels <= 2:
        gray = frame if channels == 1 else frame[..., 0]
        unused = np.setdiff1d(np.arange(256), gray[~hidden])
        if not hidden.any() or unused.size:
            return _gray_gif_frame(gray, hidden, int(unused[-1]) if hidden.any() else None)
        frame = np.concatenate([np.repeat(frame[..., :1], 3, axis=2), frame[..., 1:]], axis=2)
    transparent = keyed or bool(hidden.any())
    room = 255 if transparent else 256
    rgb = frame[..., :3].astype(np.uint32)
    packed = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    colours, inverse = np.unique(packed[~hidden], return_inverse=True)
    indices = np.zeros(frame.shape[:2], np.uint8)
    if len(colours) <= room:
        indices[~hidden] = inverse.reshape(-1)
        palette = np.stack([colours >> 16, (colours >> 8) & 0xFF, colours & 0xFF], axis=1)
    else:
        rgb_image = Image.fromarray(np.ascontiguousarray(frame[..., :3]))
        paletted = rgb_image.quantize(colors=room, method=Image.Quantize.MEDIANCUT)
        indices = np.asarray(paletted).copy()
        palette = np.asarray((paletted.getpalette() or [])[: 3 * room]).reshape(-1, 3)
    indices[hidden] = 255
    result = Image.frombytes("P", (frame.shape[1], frame.shape[0]), indices.tobytes())
    flat = palette.astype(np.uint8).reshape(-1).tobytes()
    result.putpalette(flat + bytes(768 - len(flat)))
    if transparent:
        result.info["transparency"] = 255
    return result


def _give_transparent_entry_an_unused_colour(frames: Sequence[Image.Image]) -> None:
    """Set palette entry 255 of every frame to one colour that no other entry of any has."""
    used: set[int] = set()
    palettes = []
    for frame in frames:
        palette = np.frombuffer(bytes(frame.getpalette() or []), np.uint8).reshape(-1, 3)
        palette = np.concatenate([palette, np.zeros((256 - len(palette), 3), np.uint8)])
        palettes.append(palette)
        entries = palette[:255].astype(np.uint32)
        used.update(((entries[:, 0] << 16) | (entries[:, 1] << 8) | entries[:, 2]).tolist())
    free = next(colour for colour in range(len(used) + 1) if colour not in used)
    for frame, palette in zip(frames, palettes, strict=True):
        palette[255] = (free >> 16, (free >> 8) & 0xFF, free & 0xFF)
        frame.putpalette(palette.tobytes())


def _gray_gif_frame(gray: np.ndarray, hidden: np.ndarray, key: int | None) -> Image.Image:
    pixels = np.array(gray, dtype=np.uint8)
    if key is not None:
        pixels[hidden] = key
    result = Image.fromarray(pixels)
    if key is not None:
        result.info["transparency"] = key
    return result
