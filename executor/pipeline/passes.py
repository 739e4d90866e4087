"""One pass over images: the models a run loads once, the batches the loop feeds them, and the Pass that scores
(mining) or records boxes (infer) for every image of a shard.
"""

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import numpy as np

from executor.engine.detector import Detector
from executor.engine.images import letterbox
from executor.engine.loading import load_detector
from executor.engine.loop import device_letterbox
from executor.engine.loop import Unreadable, batches, out_of_memory_hint
from executor.pipeline.shards import SideSpec
from executor.protocol.settings import Settings
from executor.protocol.writers import UNREADABLE_SCORE, box_record, instance_record
from executor.shared import TASK_OF_OBJECT_TYPE
from mining import get_scorer, scorer_params
from mining.base import Batch
from mining.duplicates import photo


@dataclass
class Models:
    """Detectors loaded during one run, so mining and infer of one call load the model once. `load` loads one
    (executor.engine.loading.load_detector's signature; None: that function): where tests put a fake detector."""
    loaded: dict = field(default_factory=dict)
    load: Callable[..., Detector] | None = None

    def detector(self, settings: Settings, weights: str) -> Detector:
        """The model in `weights` with the NMS settings of `settings` (loaded once, for its input size)."""
        post = {"conf_thres": settings.conf_thres, "iou_thres": settings.iou_thres, "max_det": settings.max_det}
        for detector in self.loaded.values():
            if detector.weights == weights and detector.img_size == detector.input_size(settings.img_size):
                return detector.with_postprocess(**post)
        detector = (self.load or load_detector)(weights, settings.backend, settings.gpu_id, settings.img_size,
                                 class_names=settings.class_names, pin_memory=settings.pin_memory,
                                 threads=settings.cpu_threads, task=TASK_OF_OBJECT_TYPE[settings.object_type], **post)
        self.loaded[weights] = detector
        return detector


# ---------------------------------------------------------------- the loop's consumers

def image_batches(keys: Sequence[str], detector: Detector | None, settings: Settings, report: Callable[[int], None],
                  unreadable: dict[str, str], names: Sequence[str] = ()) -> Iterator[Batch]:
    """The loop's batches (unreadable images go to `unreadable` with their reason); report(images done).
    `names`: the result key of each of `keys`, handed to the scorer as Batch.names."""
    name_of = dict(zip(keys, names))
    prepare = detector.letterbox if detector else (lambda image: letterbox(image, settings.img_size))
    on_device = device_letterbox(settings.get("gpu_decode", "auto"), detector)  # None: OpenCV in threads
    overlap = detector is not None and not detector.uses_cpu_cores  # the model on a GPU: decode meanwhile
    done = 0
    for item in batches(keys, prepare, settings.batch_size_per_gpu, settings.num_workers_per_gpu, on_device,
                        overlap):
        if isinstance(item, Unreadable):
            unreadable[item.key] = item.reason
            done += 1
        else:
            if name_of:
                item.names = [name_of[key] for key in item.keys]
            yield item
            done += len(item.keys)
        report(done)


class Recorder:
    """The detector as a scorer sees it, keeping what `predict` returned for the current batch, so inference
    can take its boxes from the scorer's own forward instead of running another."""

    def __init__(self, detector: Detector):
        self.detector, self.calls = detector, []

    def __getattr__(self, name):
        return getattr(self.detector, name)

    def predict(self, batch: Batch, conf_thres: float | None = None, capped: bool = True):
        found = self.detector.predict(batch, conf_thres, capped)
        self.calls.append((batch, self.detector.conf_thres if conf_thres is None else conf_thres, capped, found))
        return found

    def reusable(self, batch: Batch, infer: Detector):
        """`infer`'s detections of `batch` from a recorded call, when that call kept a superset of them: the same
        model and NMS, a threshold no higher, no cut below infer's max_det (NMS keeps a box above the higher
        threshold iff it keeps it above the lower one: only higher boxes suppress it)."""
        if self.detector.weights != infer.weights or self.detector.iou_thres != infer.iou_thres or infer.multi_label:
            return None
        for seen, conf, capped, found in self.calls:
            if seen is batch and conf <= infer.conf_thres and (not capped or self.detector.max_det >= infer.max_det):
                return [restrict(det, infer.conf_thres, infer.max_det) for det in found]
        return None


def restrict(det, conf_thres: float, max_det: int):
    return det.subset(np.where(det.conf > conf_thres)[0][:max_det])


def infer_record(det, box, names: Sequence[str]):
    """What infer-result.json says of one image: its box records (detection), or its size (from its letterbox
    map `box`) and instances with their masks (segmentation)."""
    if det.masks is None:
        return [box_record(xyxy, names[cls], conf) for xyxy, cls, conf in zip(det.xyxy, det.cls, det.conf)]
    instances = [instance_record(xyxy, names[cls], conf, rle)
                 for xyxy, cls, conf, rle in zip(det.xyxy, det.cls, det.conf, det.masks.rles())]
    return {"height": int(box.height), "width": int(box.width), "instances": instances}


@dataclass
class Pass:
    """What one worker needs to score and/or detect a shard in one pass over its images."""
    settings: dict                      # task → Settings ("mining" and/or "infer")
    scorer: object = None
    mining_detector: Detector | None = None
    infer_detector: Detector | None = None
    side: SideSpec | None = None        # what the mining shards' side files hold (side_spec)
    tap_detector: Detector | None = None  # whose forward the side data come from (mining's own model)
    forward_seconds: float = 0.0        # forwards run for embeddings only (an algorithm that runs none)

    @property
    def loop_settings(self) -> Settings:  # batch size, decoding threads, img_size of the pass
        return self.settings.get("mining") or self.settings["infer"]

    @property
    def geometry(self) -> Detector | None:
        return self.mining_detector or self.infer_detector

    @property
    def infer_shares_forward(self) -> bool:
        """Infer's model is the scorer's (one loaded network, one tap), so infer can read the boxes of the
        scorer's own forward (ALDD's, whose maps alone would skip the box branch) instead of running another."""
        return (self.infer_detector is not None and self.mining_detector is not None
                and self.infer_detector.tap is self.mining_detector.tap)

    def run(self, keys: Sequence[str], report: Callable[[int], None], unreadable: dict[str, str],
            names: Sequence[str] = ()) -> dict:
        """{"mining": scores, "infer": box records} of `keys` (the tasks of this pass; `names`: their result keys),
        images decoded once."""
        scores: dict[str, float] = {}
        records: dict[str, list] = {}
        sizes: dict[str, tuple[int, int]] = {}  # infer: each image's decoded (width, height)
        side: dict[str, tuple] = {}
        batch_size = self.loop_settings.batch_size_per_gpu
        tapped = self.tap_detector if self.side else None
        for batch in image_batches(keys, self.geometry, self.loop_settings, report, unreadable, names):
            with out_of_memory_hint(batch, batch_size):
                recorder = Recorder(self.mining_detector) if self.mining_detector else None
                # the scorer's forward of the batch keeps what the side data and infer read of it
                armed = [d.tap for d in (tapped, self.infer_detector if self.infer_shares_forward else None) if d]
                for tap in armed:
                    tap.arm(batch)
                if self.scorer is not None:
                    scores.update(zip(batch.keys, self.scorer.score(batch, recorder).tolist()))
                if tapped is not None:
                    side.update(self.side_data(batch, tapped, recorder))
                if self.infer_detector is not None:
                    found = (recorder and recorder.reusable(batch, self.infer_detector)) or \
                        self.infer_detector.tapped_detections(batch)
                    names = self.infer_detector.names
                    records.update((key, infer_record(det, box, names))
                                   for key, det, box in zip(batch.keys, found, batch.boxes))
                    sizes.update((key, (int(box.width), int(box.height))) for key, box in zip(batch.keys, batch.boxes))
                for tap in armed:  # keep no output of this batch alive into the next
                    tap.clear()
        scores.update((key, UNREADABLE_SCORE) for key in unreadable)
        return {"mining": scores, "infer": records, "side": side, "sizes": sizes}

    def side_data(self, batch: Batch, detector: Detector, recorder: "Recorder | None") -> dict[str, tuple]:
        """key → (embedding or None, detections at mining's conf_thres/max_det or None, (photo hash, thumbnail) or
        None), from
        the forward the scorer just ran (a forward of its own only for an algorithm that runs none, such as
        random) and the decoded originals."""
        started, pooled = time.perf_counter(), detector.tap.seconds
        forwarded = self.side.embeddings and detector.tap.embeddings is None  # nothing ran: forward now
        embeddings = detector.embed(batch) if self.side.embeddings else None
        if forwarded:
            self.forward_seconds += time.perf_counter() - started - (detector.tap.seconds - pooled)
        found = None
        if self.side.boxes or self.side.class_counts:
            found = (recorder and recorder.reusable(batch, detector)) or detector.tapped_detections(batch)
        if found is not None:  # the side data outlive the batch: keep no prototypes alive
            found = [dataclasses.replace(det, masks=None) for det in found]
        photos = [photo(image) for image in batch.images] if self.side.hashes else None
        return {key: (None if embeddings is None else embeddings[i], None if found is None else found[i],
                      None if photos is None else photos[i])
                for i, key in enumerate(batch.keys)}


def open_scorer(settings: Settings):
    name = settings.mining_algorithm
    return get_scorer(name, **scorer_params(name, settings))
