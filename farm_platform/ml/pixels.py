"""Pixels: decoding photos, cutting and resizing crops, tensors on the device, and the
CPU pools that do it in parallel (`farm_platform.ml.inference` is the public entry)."""

from __future__ import annotations

import io
import math
import os
import struct
import threading
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np
import torch
from PIL import Image

from farm_platform.config_values import available_cores


class ImageDecodeError(ValueError):
    """Bytes that are not a decodable image convertible to RGB."""


# ---------------------------------------------------------------------------------------
# Parallel CPU work: decoding photos, resizing crops

_T = TypeVar("_T")
_R = TypeVar("_R")
_pool_lock = threading.Lock()
_pools: dict[tuple[str, int], ThreadPoolExecutor] = {}
# A forked child inherits the pools but not their threads: work handed to them would wait
# forever. It makes its own on first use.
os.register_at_fork(after_in_child=_pools.clear)
# The CPU workers of this process, like torch's own thread count a process-wide setting:
# `use_threads` sets it from the caller's InferenceSettings (FARM_TORCH_THREADS); until
# then, the cores this process may use.
_threads: int | None = None


def use_threads(threads: int) -> None:
    """Run the CPU pools (and ONNX and torch CPU work) on `threads` workers from now on."""
    global _threads
    _threads = threads


def cpu_threads() -> int:
    """The workers `use_threads` set, else the cores this process may use."""
    return _threads or available_cores()


def _cpu_pool(purpose: str, workers: int) -> ThreadPoolExecutor:
    # Threads, not processes: Pillow and zlib release the GIL while they decode and
    # resize, and the decoded arrays need no pickling back to the caller.
    with _pool_lock:
        key = (purpose, workers)
        if key not in _pools:
            _pools[key] = ThreadPoolExecutor(workers, thread_name_prefix=f"farm-{purpose}")
        return _pools[key]


def parallel_map(
    function: Callable[[_T], _R], items: Sequence[_T], purpose: str = "crops"
) -> list[_R]:
    """`[function(item) for item in items]`, in order, on `cpu_threads()` workers.

    Items go in one contiguous slice per worker: a crop resize takes microseconds, and a
    task per item would cost more in hand-offs than it saves. Each `purpose` has its own
    pool: the next chunk's decoding (`"decode"`, in a reader thread) must not queue ahead
    of this chunk's crop resizing, which the device waits for."""
    workers = cpu_threads()
    if workers < 2 or len(items) < 2:
        return [function(item) for item in items]
    step = math.ceil(len(items) / workers)
    slices = [items[i : i + step] for i in range(0, len(items), step)]
    results: list[_R] = []
    pool = _cpu_pool(purpose, workers)
    for part in pool.map(lambda chunk: [function(item) for item in chunk], slices):
        results.extend(part)
    return results


# ---------------------------------------------------------------------------------------
# Images


def decode_png(data: bytes) -> np.ndarray:
    """PNG bytes -> (H, W, 3) uint8 RGB array; ImageDecodeError says why it is unusable."""
    if not data:
        raise ImageDecodeError("cannot decode image: the data is empty (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            rgb = image.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageDecodeError(
            f"cannot decode image ({len(data)} bytes, starting {bytes(data[:8])!r}): {exc}"
        ) from None
    array = np.asarray(rgb, dtype=np.uint8)
    if array.ndim != 3 or array.shape[2] != 3 or array.shape[0] == 0 or array.shape[1] == 0:
        raise ImageDecodeError(f"cannot decode image: unexpected decoded shape {array.shape}")
    return array


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(data, zlib.crc32(tag))
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)


def encode_png(array: np.ndarray) -> bytes:
    """(H, W, 3) uint8 RGB -> PNG bytes (8-bit RGB, lossless: decodes to the same pixels).

    Crops are small and written by the thousand, on the cores the models run on, so this
    spends as little CPU per crop as a PNG allows: rows unfiltered, deflate "stored"
    (level 0). Measured on the simulator's crops (~50x20 px, a ~2.8 KB raw image): ~10 us
    of CPU per crop here against ~150 us for Pillow at compress_level=1, for ~24% more
    bytes (2.86 KB against 2.31 KB; photo-like pixels hardly compress, and zlib's match
    search and Huffman coding cost 75-110 us per crop on this machine whatever the filter).
    """
    pixels = np.ascontiguousarray(array, dtype=np.uint8)
    if pixels.ndim != 3 or pixels.shape[2] != 3 or 0 in pixels.shape:
        raise ValueError(f"expected a non-empty (H, W, 3) uint8 image, got shape {array.shape}")
    height, width = pixels.shape[:2]
    rows = np.empty((height, width * 3 + 1), dtype=np.uint8)
    rows[:, 0] = 0  # filter type None
    rows[:, 1:] = pixels.reshape(height, width * 3)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"".join(
        (
            _PNG_SIGNATURE,
            _png_chunk(b"IHDR", header),
            _png_chunk(b"IDAT", zlib.compress(rows.tobytes(), 0)),
            _PNG_END,
        )
    )


def box_pixels(box: Sequence[float], height: int, width: int) -> tuple[int, int, int, int]:
    """Integer pixel window (x0, y0, x1, y1) covering a float box, inside the image, >= 1 px."""
    x0 = min(max(int(math.floor(box[0])), 0), width - 1)
    y0 = min(max(int(math.floor(box[1])), 0), height - 1)
    x1 = max(min(int(math.ceil(box[2])), width), x0 + 1)
    y1 = max(min(int(math.ceil(box[3])), height), y0 + 1)
    return x0, y0, x1, y1


def cut_crop(image: np.ndarray, box: Sequence[float]) -> np.ndarray:
    x0, y0, x1, y1 = box_pixels(box, image.shape[0], image.shape[1])
    return image[y0:y1, x0:x1]


def resize_crop(crop: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a crop to the grader input (H, W); training uses the very same function."""
    height, width = size
    if crop.shape[0] == height and crop.shape[1] == width:
        return crop
    return np.asarray(Image.fromarray(crop).resize((width, height), Image.BILINEAR))


def letterbox(
    image: np.ndarray, size: tuple[int, int], pad_value: int = 0
) -> tuple[np.ndarray, tuple[float, float, int, int]]:
    """`image` scaled to fit (H, W) with its aspect ratio kept, centred on a `pad_value`
    grey; and (scale x, scale y, left pad, top pad): input x = photo x * scale x + left."""
    height, width = size
    scale = min(height / image.shape[0], width / image.shape[1])
    new_w = max(1, min(width, round(image.shape[1] * scale)))
    new_h = max(1, min(height, round(image.shape[0] * scale)))
    left, top = (width - new_w) // 2, (height - new_h) // 2
    canvas = np.full((height, width, 3), pad_value, dtype=np.uint8)
    canvas[top : top + new_h, left : left + new_w] = resize_crop(image, (new_h, new_w))
    return canvas, (new_w / image.shape[1], new_h / image.shape[0], left, top)


def to_tensor(
    arrays: Sequence[np.ndarray] | np.ndarray,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) `dtype` in [0, 1], on `device` (default CPU).

    To a GPU the uint8 pixels travel (a quarter of the float bytes) from pinned memory
    without blocking the host, and become floats there; the values are the same."""
    if device is not None and device.type == "cuda":
        shape = arrays[0].shape if len(arrays) else (0, 0, 3)
        pinned = torch.empty((len(arrays), *shape), dtype=torch.uint8, pin_memory=True)
        if len(arrays):
            # Stacked straight into page-locked memory: one host copy, not two.
            np.stack(arrays, out=pinned.numpy())
        pixels = pinned.to(device, non_blocking=True)
    else:
        stacked = arrays if isinstance(arrays, np.ndarray) else np.stack(arrays)
        pixels = torch.from_numpy(np.ascontiguousarray(stacked))
    tensor = pixels.permute(0, 3, 1, 2).float().div_(255.0)
    return tensor if dtype == torch.float32 else tensor.to(dtype)


def prepare_crops(
    crops: Sequence[np.ndarray],
    input_size: tuple[int, int],
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    resize: str = "stretch",
    pad_value: int = 0,
) -> torch.Tensor:
    """Resized grader input for many crops; compute once and pass to every grader.

    `resize`: "stretch" (the shipped graders) or "letterbox" on a `pad_value` grey."""
    if not crops:
        return torch.zeros((0, 3, *input_size), device=device, dtype=dtype)
    if resize == "letterbox":
        resized = parallel_map(lambda crop: letterbox(crop, input_size, pad_value)[0], crops)
    else:
        resized = parallel_map(lambda crop: resize_crop(crop, input_size), crops)
    return to_tensor(resized, device, dtype)
