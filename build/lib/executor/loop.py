"""The one batched loop: decodes and letterboxes images in worker threads while the model works on the
previous batch, and yields batches of one canvas shape, in the order they fill, with the unreadable images
reported as they come (an unreadable image never aborts the job).

Images are batched with others of the same canvas shape: a batch waits in its bucket until it is full, or
until too many images wait, when the fullest bucket goes as it is. Memory stays flat in the pool size: at
most `prefetch` images are being decoded and at most `2 * batch_size` wait in buckets. The batch size is
the one asked for: progress is counted in images by the caller, whatever the batch.
"""
import contextlib
import logging
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import cv2
import numpy as np

from executor.errors import ImageError, OutOfMemory, QuarryError, error_code, one_line
from executor.images import Letterbox, read_image
from mining.base import Batch

log = logging.getLogger(__name__)
Prepare = Callable[[np.ndarray], tuple[np.ndarray, Letterbox]]  # original → (canvas, letterbox map)


@dataclass
class Unreadable:
    key: str
    reason: str


@dataclass
class Decoded:
    key: str
    image: np.ndarray | None = None
    canvas: np.ndarray | None = None
    box: Letterbox | None = None
    error: str = ""


def decode(key: str, prepare: Prepare) -> Decoded:
    try:
        image = read_image(key)
    except ImageError as exc:
        return Decoded(key, error=str(exc))
    canvas, box = prepare(image)
    return Decoded(key, image, canvas, box)


def decoded_stream(keys: Sequence[str], prepare: Prepare, workers: int, prefetch: int) -> Iterator[Decoded]:
    """Decoded images in input order, `prefetch` of them in flight (OpenCV releases the GIL)."""
    if workers <= 0:
        yield from (decode(key, prepare) for key in keys)
        return
    cv2.setNumThreads(1)  # parallelism comes from our workers; leave the cores to the model
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:
        pending: deque = deque()
        for key in keys:
            pending.append(pool.submit(decode, key, prepare))
            if len(pending) >= prefetch:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def batches(keys: Sequence[str], prepare: Prepare, batch_size: int, workers: int) -> Iterator[Batch | Unreadable]:
    """Every image of `keys` once: readable ones in batches of one canvas shape, unreadable ones one by one
    (named in a warning)."""
    buckets: dict[tuple, list[Decoded]] = {}  # canvas shape -> images waiting for a batch, by first arrival

    def flush(shape: tuple) -> Batch:
        good = buckets.pop(shape)
        return Batch([g.key for g in good], [g.image for g in good], np.stack([g.canvas for g in good]),
                     [g.box for g in good])

    for item in decoded_stream(keys, prepare, workers, prefetch=2 * batch_size + workers):
        if item.error:
            log.warning("skipping unreadable image: %s", item.error)
            yield Unreadable(item.key, item.error)
            continue
        bucket = buckets.setdefault(item.canvas.shape, [])
        bucket.append(item)
        if len(bucket) == batch_size:
            yield flush(item.canvas.shape)
        elif sum(map(len, buckets.values())) > 2 * batch_size:
            yield flush(max(buckets, key=lambda shape: len(buckets[shape])))
    for shape in list(buckets):
        yield flush(shape)


@contextlib.contextmanager
def out_of_memory_hint(batch: Batch, batch_size: int):
    """An out-of-memory error while processing `batch` becomes OutOfMemory naming the keys that set its size."""
    try:
        yield
    except Exception as exc:
        if isinstance(exc, QuarryError) or error_code(exc) != OutOfMemory.code:
            raise
        raise OutOfMemory(f"out of memory on a batch of {len(batch.keys)} images of {batch.canvases.shape[2]}x"
                          f"{batch.canvases.shape[1]} (config key 'batch_size_per_gpu' {batch_size}); lower "
                          f"batch_size_per_gpu or img_size ({one_line(exc)})") from exc
