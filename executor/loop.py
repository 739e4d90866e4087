"""The one batched loop: decodes and letterboxes images in worker threads while the model works on the
previous batch, hands batches to a callback, reports progress, and applies the per-image error policy
(an unreadable image is reported back and named in a warning, never aborts the job).

With rectangular canvases (`stride` given) images are batched with others of the same canvas shape:
a batch waits in its bucket until it is full, or until too many images wait, when the fullest bucket
goes as it is. Memory stays flat in the pool size: at most `prefetch` images are being decoded and at
most `2 * batch_size` wait in buckets.
"""
import logging
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import cv2
import numpy as np

from executor.errors import ImageError, OutOfMemory, QuarryError, error_code, one_line
from executor.images import Letterbox, letterbox, read_image

log = logging.getLogger(__name__)
PROGRESS_STEPS = 100  # at least one progress update per 1% of the images


@dataclass
class Batch:
    keys: list[str]           # candidate paths, as given
    images: list[np.ndarray]  # originals, RGB uint8 (H, W, 3)
    canvases: np.ndarray      # letterboxed network inputs (B, H, W, 3) uint8, one shape per batch
    boxes: list[Letterbox]    # how each original maps into its canvas


@dataclass
class Decoded:
    key: str
    image: np.ndarray | None = None
    canvas: np.ndarray | None = None
    box: Letterbox | None = None
    error: str = ""


def decode(key: str, img_size: int, stride: int | None = None) -> Decoded:
    try:
        image = read_image(key)
    except ImageError as exc:
        return Decoded(key, error=str(exc))
    canvas, box = letterbox(image, img_size, stride)
    return Decoded(key, image, canvas, box)


def decoded_stream(keys: Sequence[str], img_size: int, workers: int, prefetch: int,
                   stride: int | None = None) -> Iterator[Decoded]:
    """Decoded images in input order, `prefetch` of them in flight (OpenCV releases the GIL)."""
    if workers <= 0:
        yield from (decode(key, img_size, stride) for key in keys)
        return
    cv2.setNumThreads(1)  # parallelism comes from our workers; leave the cores to the model
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:
        pending: deque = deque()
        for key in keys:
            pending.append(pool.submit(decode, key, img_size, stride))
            if len(pending) >= prefetch:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def same_shape_chunks(canvases: Sequence[np.ndarray], size: int) -> list[list[int]]:
    """Indices of `canvases` in chunks of at most `size` canvases of one shape (shapes in order of first
    appearance; the last chunk of each shape may be short)."""
    by_shape: dict[tuple, list[int]] = {}
    for k, canvas in enumerate(canvases):
        by_shape.setdefault(canvas.shape, []).append(k)
    return [ks[i:i + size] for ks in by_shape.values() for i in range(0, len(ks), size)]


def progress_batch_size(requested: int, total: int) -> int:
    """Small pools get smaller batches so progress moves at least every 1% (scores don't depend on it)."""
    return max(1, min(requested, total // PROGRESS_STEPS or 1))


def run_batches(keys: Sequence[str], img_size: int, batch_size: int, workers: int,
                on_batch: Callable[[Batch], None], progress: Callable[[float], None],
                stride: int | None = None) -> list[tuple[str, str]]:
    """Feed every readable image to `on_batch` in batches of one canvas shape (square canvases, or
    rectangles of `stride` multiples); returns (key, reason) of the unreadable ones."""
    total = len(keys)
    size = progress_batch_size(batch_size, total)
    failures: list[tuple[str, str]] = []
    buckets: dict[tuple, list[Decoded]] = {}  # canvas shape -> images waiting for a batch, by first arrival
    done = 0

    def flush(shape: tuple) -> None:
        nonlocal done
        good = buckets.pop(shape)
        try:
            on_batch(Batch([g.key for g in good], [g.image for g in good],
                           np.stack([g.canvas for g in good]), [g.box for g in good]))
        except Exception as exc:
            if isinstance(exc, QuarryError) or error_code(exc) != OutOfMemory.code:
                raise
            raise OutOfMemory(f"out of memory on a batch of {len(good)} images at img_size {img_size} "
                              f"(config key 'batch_size_per_gpu' {batch_size}); lower batch_size_per_gpu "
                              f"or img_size ({one_line(exc)})") from exc
        done += len(good)
        progress(done / total)

    for item in decoded_stream(keys, img_size, workers, prefetch=2 * size + workers, stride=stride):
        if item.error:
            log.warning("skipping unreadable image: %s", item.error)
            failures.append((item.key, item.error))
            done += 1
            continue
        bucket = buckets.setdefault(item.canvas.shape, [])
        bucket.append(item)
        if len(bucket) == size:
            flush(item.canvas.shape)
        elif sum(map(len, buckets.values())) > 2 * size:
            flush(max(buckets, key=lambda shape: len(buckets[shape])))
    for shape in list(buckets):
        flush(shape)
    progress(1.0)
    return failures
