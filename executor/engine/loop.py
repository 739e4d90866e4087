"""The one batched loop: decodes and letterboxes images in worker threads, while a GPU works on the previous
batch (with the model on the same CPU cores: between its forwards, on every core), and yields batches of one
canvas shape, in the order they fill, with the unreadable images reported as they come (an unreadable image
never aborts the job).

With `on_device` (template key gpu_decode, executor/engine/gpu_decode.py) the files are read in those threads (and the
few the device cannot decode are decoded there by OpenCV), then decoded and letterboxed on the device a batch
at a time, up to two batches ahead, in a thread of its own: the canvases are then a device tensor. The same
images give the same canvas shapes either way, so the batches are the same, in the same order.

Images are batched with others of the same canvas shape: a batch waits in its bucket until it is full, or
until too many images wait (`waiting_limit`), when the fullest bucket goes as it is, or until its first image
has waited while 4 × that many others arrived, when it goes as it is: every image leaves the loop within a
bounded number of images after it entered it, so a caller that groups the images (shards) sees each group done
soon after its last image went in. Memory stays flat in the pool size: at most `prefetch` images (on the device:
three batches) are being decoded and at most `waiting_limit` images wait in buckets. The batch size is the one
asked for: progress is counted in images by the caller, whatever the batch.
"""
import contextlib
import logging
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import cv2
import numpy as np
import torch

from executor.engine.gpu_decode import DeviceLetterbox, read_source
from executor.engine.images import Letterbox, read_image
from executor.engine.torch_detector import TorchDetector
from executor.errors import ConfigError, ImageError, OutOfMemory, QuarryError, error_code, one_line
from mining.base import Batch

log = logging.getLogger(__name__)
# Images waiting in buckets before the fullest goes out partly filled: at least WAITING_BATCHES batches (with 2,
# COCO's mix of canvas shapes sent no batch of 16 out full; 4 gives 22 forwards for 206 images, 8 of them full,
# 2-5% faster on CPU: benchmarks/FINDINGS.md, item 21) and at least WAITING_IMAGES images (small CPU batches
# fill better: batch 4 over 200 COCO images, 61 forwards with 16 waiting, 54 with 64). Memory: up to this many
# originals and canvases.
WAITING_BATCHES = 4
WAITING_IMAGES = 64
OLDEST = 4  # a bucket whose first image waited while OLDEST × waiting_limit images arrived goes out as it is
Prepare = Callable[[np.ndarray], tuple[np.ndarray, Letterbox]]  # original → (canvas, letterbox map)


@dataclass
class Unreadable:
    key: str
    reason: str


@dataclass
class Decoded:
    key: str
    image: np.ndarray | None = None
    canvas: np.ndarray | torch.Tensor | None = None
    box: Letterbox | None = None
    device_image: torch.Tensor | None = None  # decoded on the device: the original there, (H, W, 3)
    error: str = ""


def decode(key: str, prepare: Prepare) -> Decoded:
    try:
        image = read_image(key)
    except ImageError as exc:
        return Decoded(key, error=str(exc))
    canvas, box = prepare(image)
    return Decoded(key, image, canvas, box)


def decoded_stream(keys: Sequence[str], prepare: Prepare, workers: int, prefetch: int,
                   overlap: bool = True) -> Iterator[Decoded]:
    """Decoded images in input order, `prefetch` of them in flight (OpenCV releases the GIL). Without `overlap`
    (the model runs on the same CPU cores) each `prefetch` images are decoded together and handed over only once
    all are done, so no decoding runs while the consumer runs the model: a decode thread that preempts one of the
    model's OpenMP threads stalls the whole parallel region, which costs more than the decoding itself."""
    if workers <= 0:
        yield from (decode(key, prepare) for key in keys)
        return
    cv2.setNumThreads(1)  # parallelism comes from our workers; leave the cores to the model
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:
        if not overlap:
            for start in range(0, len(keys), prefetch):
                done = [future.result() for future in [pool.submit(decode, key, prepare)
                                                       for key in keys[start:start + prefetch]]]
                yield from done
            return
        pending: deque = deque()
        for key in keys:
            pending.append(pool.submit(decode, key, prepare))
            if len(pending) >= prefetch:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def device_decoded_stream(keys: Sequence[str], on_device: DeviceLetterbox, workers: int, chunk: int
                          ) -> Iterator[Decoded]:
    """Decoded images in input order: files read (and those the device cannot decode decoded by OpenCV) in
    `workers` threads, decoded and letterboxed on the device `chunk` at a time in one thread, up to two chunks
    ahead of the consumer."""
    parts = [keys[i:i + chunk] for i in range(0, len(keys), chunk)]

    def wrap(part, results) -> Iterator[Decoded]:
        for key, got in zip(part, results):
            yield Decoded(key, error=str(got)) if isinstance(got, ImageError) else Decoded(key, *got)

    if workers <= 0:
        for part in parts:
            yield from wrap(part, on_device.decode([read_source(key) for key in part]))
        return
    cv2.setNumThreads(1)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="read") as readers, \
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="device-decode") as device:
        pending: deque = deque()
        for part in parts:
            reads = [readers.submit(read_source, key) for key in part]
            pending.append((part, device.submit(lambda reads=reads: on_device.decode([r.result() for r in reads]))))
            if len(pending) > 2:
                part_done, results = pending.popleft()
                yield from wrap(part_done, results.result())
        while pending:
            part_done, results = pending.popleft()
            yield from wrap(part_done, results.result())


def batches(keys: Sequence[str], prepare: Prepare, batch_size: int, workers: int,
            on_device: DeviceLetterbox | None = None, overlap: bool = True) -> Iterator[Batch | Unreadable]:
    """Every image of `keys` once: readable ones in batches of one canvas shape, unreadable ones one by one
    (named in a warning). `on_device`: decode and letterbox there (its geometry replaces `prepare`'s);
    `overlap`: decode while the model runs (False when the model runs on the decoding threads' cores)."""
    if batch_size < 1:  # 0 is auto: the plan makes it the device's (executor.engine.device.batch_size)
        raise ValueError(f"batch size {batch_size}: at least 1 image per batch")
    buckets: dict[tuple, list[Decoded]] = {}  # canvas shape -> images waiting for a batch, by first arrival
    first_seen: dict[tuple, int] = {}  # canvas shape -> arrival number of its bucket's first image
    stack = np.stack if on_device is None else torch.stack
    waiting, oldest = waiting_limit(batch_size), OLDEST * waiting_limit(batch_size)

    def flush(shape: tuple) -> Batch:
        good = buckets.pop(shape)
        del first_seen[shape]
        return Batch([g.key for g in good], [g.image for g in good], stack([g.canvas for g in good]),
                     [g.box for g in good], None if on_device is None else [g.device_image for g in good])

    stream = decoded_stream(keys, prepare, workers, 2 * batch_size + workers, overlap) if on_device is None else \
        device_decoded_stream(keys, on_device, workers, batch_size)
    for arrived, item in enumerate(stream):
        if item.error:
            log.warning("skipping unreadable image: %s", item.error)
            yield Unreadable(item.key, item.error)
            continue
        shape = tuple(item.canvas.shape)
        bucket = buckets.setdefault(shape, [])
        first_seen.setdefault(shape, arrived)
        bucket.append(item)
        if len(bucket) == batch_size:
            yield flush(shape)
        elif sum(map(len, buckets.values())) > waiting:
            yield flush(max(buckets, key=lambda shape: len(buckets[shape])))
        for stale in [s for s, first in first_seen.items() if arrived - first >= oldest]:
            yield flush(stale)
    for shape in list(buckets):
        yield flush(shape)


def waiting_limit(batch_size: int) -> int:
    """How many images may wait in buckets before the fullest goes out part-empty."""
    return max(WAITING_IMAGES, WAITING_BATCHES * batch_size)


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


def device_letterbox(setting, detector) -> DeviceLetterbox | None:
    """The template key gpu_decode ('auto', True, False) for `detector`: where the loop decodes (None: OpenCV
    in worker threads). auto = on when the model is a PyTorch one on a CUDA device; True without one is a
    ConfigError; no model (random scoring) means no network input to feed: off."""
    if setting is False or detector is None:
        return None
    cuda = isinstance(detector, TorchDetector) and detector.device.type == "cuda"
    if not cuda:
        if setting is True:
            raise ConfigError(f"config key 'gpu_decode': true needs a PyTorch model on a CUDA GPU; this one runs "
                              f"on {getattr(detector, 'device', 'cpu')} ({type(detector).__name__}); use auto or false")
        return None
    return DeviceLetterbox(detector.device, detector.img_size, detector.rect_stride)
