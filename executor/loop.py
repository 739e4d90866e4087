"""The one batched loop: decodes and letterboxes images in worker threads while the model works on the
previous batch, hands full batches to a callback, reports progress, and applies the per-image error
policy (an unreadable image is reported back and named in a warning, never aborts the job).

Memory stays flat in the pool size: at most `prefetch` decoded images are held at any time.
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
    canvases: np.ndarray      # letterboxed network inputs (B, S, S, 3) uint8
    boxes: list[Letterbox]    # how each original maps into its canvas


@dataclass
class Decoded:
    key: str
    image: np.ndarray | None = None
    canvas: np.ndarray | None = None
    box: Letterbox | None = None
    error: str = ""


def decode(key: str, img_size: int) -> Decoded:
    try:
        image = read_image(key)
    except ImageError as exc:
        return Decoded(key, error=str(exc))
    canvas, box = letterbox(image, img_size)
    return Decoded(key, image, canvas, box)


def decoded_stream(keys: Sequence[str], img_size: int, workers: int, prefetch: int) -> Iterator[Decoded]:
    """Decoded images in input order, `prefetch` of them in flight (OpenCV releases the GIL)."""
    if workers <= 0:
        yield from (decode(key, img_size) for key in keys)
        return
    cv2.setNumThreads(1)  # parallelism comes from our workers; leave the cores to the model
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:
        pending: deque = deque()
        for key in keys:
            pending.append(pool.submit(decode, key, img_size))
            if len(pending) >= prefetch:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def progress_batch_size(requested: int, total: int) -> int:
    """Small pools get smaller batches so progress moves at least every 1% (scores don't depend on it)."""
    return max(1, min(requested, total // PROGRESS_STEPS or 1))


def run_batches(keys: Sequence[str], img_size: int, batch_size: int, workers: int,
                on_batch: Callable[[Batch], None], progress: Callable[[float], None]) -> list[tuple[str, str]]:
    """Feed every readable image to `on_batch` in batches; returns (key, reason) of unreadable ones."""
    total = len(keys)
    size = progress_batch_size(batch_size, total)
    failures: list[tuple[str, str]] = []
    done, chunk = 0, []

    def flush() -> None:
        nonlocal done, chunk
        good = [item for item in chunk if not item.error]
        for item in chunk:
            if item.error:
                log.warning("skipping unreadable image: %s", item.error)
                failures.append((item.key, item.error))
        if good:
            try:
                on_batch(Batch([g.key for g in good], [g.image for g in good],
                               np.stack([g.canvas for g in good]), [g.box for g in good]))
            except Exception as exc:
                if isinstance(exc, QuarryError) or error_code(exc) != OutOfMemory.code:
                    raise
                raise OutOfMemory(f"out of memory on a batch of {len(good)} images at img_size {img_size} "
                                  f"(config key 'batch_size_per_gpu' {batch_size}); lower batch_size_per_gpu "
                                  f"or img_size ({one_line(exc)})") from exc
        done += len(chunk)
        chunk = []
        progress(done / total if total else 1.0)

    for item in decoded_stream(keys, img_size, workers, prefetch=2 * size + workers):
        chunk.append(item)
        if len(chunk) == size:
            flush()
    if chunk:
        flush()
    return failures
