"""Fitting a weights file's error model (mining/errors.py) on labelled images it did not train on, and writing it
beside the weights: at the end of training (on the val split), in the simulator (on a split whose mAP is never
reported) and by `start.py fit-errors` for weights trained elsewhere.

The images are forwarded in the evaluation's batches with every box kept down to the candidate threshold; each
image's kept boxes are matched to its labels by the one labelled pass (mining/truth.py).
"""

import json
import logging
import os
from typing import Callable, Sequence

from executor.engine.detector import Detector
from executor.engine.evaluation import predict_candidates, sample_truth
from executor.protocol.writers import atomic_write_text
from executor.shared import Sample
from mining.errors import ErrorModel, Example, errors_file, fit_error_model, labelled_example

log = logging.getLogger(__name__)


def labelled_examples(detector: Detector, samples: Sequence[Sample], conf_thres: float, max_det: int,
                      candidate_conf: float, batch_size: int, progress: Callable[[float], None] = lambda f: None
                      ) -> list[Example]:
    """Per sample (classes in the detector's indices), its features and the outcome of each kept box."""
    found = predict_candidates(detector, samples, candidate_conf, batch_size, progress)
    return [labelled_example(det, (sample.height, sample.width), sample_truth(sample), conf_thres, max_det)
            for sample, det in zip(samples, found)]


def fit_on_samples(detector: Detector, samples: Sequence[Sample], source: str, conf_thres: float, max_det: int,
                   candidate_conf: float, batch_size: int, progress: Callable[[float], None] = lambda f: None
                   ) -> ErrorModel:
    """The error model of `detector` fitted on `samples` (named `source` in the file)."""
    examples = labelled_examples(detector, samples, conf_thres, max_det, candidate_conf, batch_size, progress)
    model = fit_error_model(examples, detector.names, conf_thres, max_det, candidate_conf, source)
    model.fitted_on["img_size"] = detector.img_size  # (features depend on it: mining at another size is warned of)
    return model


def write_error_model(model: ErrorModel, weights: str, out: str = "") -> str:
    """The model written beside `weights` (atomically), or to `out`; returns its path."""
    path = out or errors_file(weights)
    atomic_write_text(path, json.dumps(model.to_dict(), indent=1) + "\n")
    log.info("error model of %s: %s, %s", os.path.basename(weights), path, model.describe())
    return path


def fit_weights(weights: str, samples: Sequence[Sample], source: str, config: dict,
                progress: Callable[[float], None] = lambda f: None, out: str = "") -> str:
    """Fit the error model of `weights` on `samples` (classes in the model's indices) at the mining settings of
    `config` (over the mining template: conf_thres, max_det, iou_thres, errors_conf_thres, img_size, device) and
    write it beside the weights (or to `out`); returns its path."""
    from executor.engine.device import batch_size
    from executor.protocol.settings import build_settings

    settings = build_settings("mining", config)
    detector = labelled_pass_detector(weights, settings)
    model = fit_on_samples(detector, samples, source, settings.conf_thres, settings.max_det,
                           settings.errors_conf_thres,
                           batch_size(settings.batch_size_per_gpu, detector.device.type == "cuda"), progress)
    return write_error_model(model, weights, out)


def labelled_pass_detector(weights: str, settings) -> Detector:
    """The PyTorch model of `weights` at the mining `settings` (device, img_size, threads, thresholds): the
    detector of a labelled pass over weights trained elsewhere (fit-errors, audit)."""
    from executor.engine.loading import load_detector

    return load_detector(weights, "torch", settings.gpu_id.split(",")[0], settings.img_size,
                         threads=settings.cpu_threads, conf_thres=settings.conf_thres, iou_thres=settings.iou_thres,
                         max_det=settings.max_det)
