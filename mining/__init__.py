"""Mining scorers: one finite score per image, higher = label first.

A scorer gets a batch (keys, original images, letterboxed canvases and their letterbox maps) and the
detector (anything with `img_size`, `predict(canvases, boxes) -> Prediction` and `predict_maps(canvases)`),
and returns one score per image. The math lives in the modules named after each algorithm; these classes
only wire it to a batch. The batching loop, progress and error policy live in executor/loop.py.
"""
import hashlib

import numpy as np
import torch

from executor.loop import same_shape_chunks
from mining.aldd import aldd_scores, class_weights
from mining.augment import make_views
from mining.cald import NO_DETECTION_SCORE, cald_score
from mining.entropy import image_entropy
from mining.random_score import random_scores


def image_seed(seed: int, key: str) -> int:
    """A per-image seed that depends only on (seed, key): the same with any batch size or order."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "little")


class RandomScorer:
    needs_model = False

    def __init__(self, settings):
        self.seed = settings.seed

    def score_batch(self, batch, detector) -> np.ndarray:
        return random_scores(batch.keys, self.seed)


class EntropyScorer:
    needs_model = True

    def __init__(self, settings):
        self.aggregation = settings.entropy_aggregation
        self.conf_thres = settings.entropy_conf_thres

    def score_batch(self, batch, detector) -> np.ndarray:
        # the same forward, but NMS keeps every box down to entropy_conf_thres: the doubtful ones carry the
        # signal, and a cut at max_det (meant for reported detections) would keep only the surest of them
        scoring = detector.with_postprocess(self.conf_thres, detector.iou_thres, None)
        prediction = scoring.predict(batch.canvases, batch.boxes)
        return np.array([image_entropy(d.probs, self.aggregation) for d in prediction.detections])


class AlddScorer:
    needs_model = True

    def __init__(self, settings):
        self.scores = settings.class_distribution_scores
        self.weights = None

    def score_batch(self, batch, detector) -> np.ndarray:
        maps = detector.predict_maps(batch.canvases)
        if self.weights is None:
            weights = class_weights(self.scores, detector.num_classes)
            self.weights = torch.as_tensor(weights, dtype=torch.float32, device=maps[0].device)
        return aldd_scores(maps, self.weights).double().cpu().numpy()


class CaldScorer:
    """Reference pass, then the 4 augmented views of every image with detections in batched passes."""
    needs_model = True

    def __init__(self, settings):
        self.seed = settings.seed

    def score_batch(self, batch, detector) -> np.ndarray:
        from executor.images import letterbox  # the network input of a view is made like any image

        refs = detector.predict(batch.canvases, batch.boxes).detections
        scores = np.full(len(refs), NO_DETECTION_SCORE, dtype=np.float64)
        owners, view_boxes, canvases, boxes = [], [], [], []
        for i, (key, image, ref) in enumerate(zip(batch.keys, batch.images, refs)):
            if not len(ref):
                continue
            rng = np.random.default_rng(image_seed(self.seed, key))
            for view, moved in make_views(image, ref.xyxy, rng):
                canvas, box = letterbox(view, detector.img_size, detector.rect_stride)  # views keep the image's size
                owners.append(i), view_boxes.append(moved), canvases.append(canvas), boxes.append(box)
        view_dets = [None] * len(canvases)
        for chunk in same_shape_chunks(canvases, max(1, len(batch.keys))):
            found = detector.predict(np.stack([canvases[k] for k in chunk]), [boxes[k] for k in chunk]).detections
            for k, det in zip(chunk, found):
                view_dets[k] = det
        for i in sorted(set(owners)):
            mine = [k for k, owner in enumerate(owners) if owner == i]
            scores[i] = cald_score(refs[i].probs, refs[i].conf, [view_boxes[k] for k in mine],
                                   [(view_dets[k].xyxy, view_dets[k].conf, view_dets[k].probs) for k in mine])
        return scores


SCORERS = {"random": RandomScorer, "entropy": EntropyScorer, "aldd": AlddScorer, "cald": CaldScorer}


def get_scorer(settings):
    """The scorer named by settings.mining_algorithm (validated by the config rules)."""
    return SCORERS[settings.mining_algorithm](settings)
