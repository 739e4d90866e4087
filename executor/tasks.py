"""Mining and inference: wiring only (index → images → detector → scorer/predictor → writer)."""
import logging
import os
import time
from typing import Callable, Sequence

import numpy as np

from executor.config import Settings, resolve_weights
from executor.errors import DatasetError, NoReadableImages
from executor.loop import run_batches
from executor.model import Detector, load_detector, round_img_size
from executor.writers import UNREADABLE_SCORE, box_record, write_infer_result, write_mining_result

log = logging.getLogger(__name__)
Progress = Callable[[float], None]


def read_candidate_index(path: str, relative_to_index: bool = False) -> list[str]:
    """Image paths of a candidate index: first tab field of each non-blank line, verbatim, each once.

    The platform writes absolute paths and rejects relative ones (ymir-protocol §4.3): a relative path is a
    DatasetError naming the file and line, unless `relative_to_index` (local lists), which joins it to the
    index file's folder. A duplicate is listed once, with a warning. Paths are not checked here: a missing
    file is an unreadable image (listed last, named in a warning) like any other."""
    if not path or not os.path.isfile(path):
        raise DatasetError(f"candidate index file not found: {path or '(input.candidate_index_file is empty)'}")
    keys, seen = [], set()
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().split("\n")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"candidate index file {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise DatasetError(f"candidate index file {path} cannot be read: {exc.strerror or exc}") from None
    for number, line in enumerate(lines, 1):
        key = line.rstrip("\r").split("\t")[0].strip()
        if not key:
            continue
        if not os.path.isabs(key):
            if not relative_to_index:
                raise DatasetError(f"{path} line {number}: {key!r} is a relative path; the index must list "
                                   "absolute image paths")
            key = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(path)), key))
        if key in seen:
            log.warning("%s line %d: duplicate entry %s is listed once", path, number, key)
            continue
        seen.add(key)
        keys.append(key)
    if not keys:
        raise DatasetError(f"candidate index file is empty: {path}")
    return keys


def weights_for(settings: Settings, models_dir: str) -> str:
    """model_params_path → one weights file: a .pt unless only an .onnx is given (or backend says onnx)."""
    paths = settings.model_params_path
    if settings.backend == "onnx":
        return resolve_weights(paths, models_dir, (".onnx",))
    if settings.backend == "torch" or any(p.lower().endswith((".pt", ".pth")) for p in paths):
        return resolve_weights(paths, models_dir, (".pt", ".pth"))
    return resolve_weights(paths, models_dir, (".pt", ".pth", ".onnx"))


def open_detector(settings: Settings, models_dir: str, reuse: Detector | None = None) -> Detector:
    """The detector the settings ask for; `reuse` (already loaded from the same weights file at the same
    size) is taken with these settings' post-processing instead of loading the model again."""
    weights = weights_for(settings, models_dir)
    post = {"conf_thres": settings.conf_thres, "iou_thres": settings.iou_thres, "max_det": settings.max_det}
    if reuse is not None and reuse.weights == weights and reuse.img_size == round_img_size(settings.img_size, 32):
        return reuse.with_postprocess(**post)
    return load_detector(weights, settings.backend, settings.gpu_id, settings.img_size,
                         class_names=settings.class_names, **post)


def fail_if_all_unreadable(keys: Sequence[str], failures: list) -> None:
    if keys and len(failures) == len(keys):
        raise NoReadableImages(f"none of the {len(keys)} images could be read; first: {failures[0][1]}")


def mine(keys: Sequence[str], detector: Detector | None, scorer, settings: Settings,
         progress: Progress) -> list[tuple[str, float]]:
    """(key, score) for every key in index order; unreadable images get the UNREADABLE_SCORE sentinel."""
    scores: dict[str, float] = {}
    start = time.monotonic()

    def on_batch(batch) -> None:
        batch_scores = np.asarray(scorer.score_batch(batch, detector), dtype=np.float64)
        if batch_scores.shape != (len(batch.keys),) or not np.isfinite(batch_scores).all() or (batch_scores < 0).any():
            raise RuntimeError(f"{settings.mining_algorithm} broke the scorer contract (one finite score >= 0 "
                               f"per image): {batch_scores}")
        scores.update(zip(batch.keys, batch_scores.tolist()))

    failures = run_batches(keys, detector.img_size if detector else settings.img_size, settings.batch_size_per_gpu,
                           settings.num_workers_per_gpu, on_batch, progress, detector and detector.rect_stride)
    fail_if_all_unreadable(keys, failures)
    elapsed = time.monotonic() - start
    log.info("mined %d images with %s in %.1f s (%.1f images/s), %d unreadable", len(keys),
             settings.mining_algorithm, elapsed, len(keys) / max(elapsed, 1e-9), len(failures))
    return [(key, scores.get(key, UNREADABLE_SCORE)) for key in keys]


def infer(keys: Sequence[str], detector: Detector, settings: Settings, progress: Progress) -> dict[str, list]:
    """Box records per image basename, in index order; unreadable images get an empty list."""
    records: dict[str, list] = {os.path.basename(key): [] for key in keys}

    def on_batch(batch) -> None:
        for key, det in zip(batch.keys, detector.predict(batch.canvases, batch.boxes).detections):
            records[os.path.basename(key)] = [
                box_record(xyxy, detector.names[cls], conf) for xyxy, cls, conf in zip(det.xyxy, det.cls, det.conf)]

    failures = run_batches(keys, detector.img_size, settings.batch_size_per_gpu, settings.num_workers_per_gpu,
                           on_batch, progress, detector.rect_stride)
    fail_if_all_unreadable(keys, failures)
    return records


def run_mining(keys, detector, settings: Settings, out_file: str, progress: Progress) -> None:
    from mining import get_scorer

    scorer = get_scorer(settings)
    write_mining_result(out_file, mine(keys, detector if scorer.needs_model else None, scorer, settings, progress))


def run_infer(keys, detector, settings: Settings, out_file: str, list_key: str, progress: Progress) -> None:
    write_infer_result(out_file, infer(keys, detector, settings, progress), list_key)
