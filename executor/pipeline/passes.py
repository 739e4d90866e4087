"""One pass over images: the models a run loads once, the batches the loop feeds them, and the Pass that scores
(mining) or records boxes (infer) for every image of a shard.
"""

import dataclasses
import functools
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

from executor.engine.detector import Detector, Forward
from executor.engine.images import letterbox
from executor.engine.loading import load_detector
from executor.engine.loop import device_letterbox
from executor.engine.loop import Unreadable, batches, out_of_memory_hint
from executor.pipeline.shards import Shard
from executor.pipeline.side_files import SideSpec
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
        """The model in `weights` with the NMS settings of `settings` (loaded once, for its input size), its
        forwards test-time augmented where the settings say `augment` (infer's; mining has no such key)."""
        post = {"conf_thres": settings.conf_thres, "iou_thres": settings.iou_thres, "max_det": settings.max_det}
        found = next((detector.with_postprocess(**post) for detector in self.loaded.values()
                      if detector.weights == weights and detector.img_size == detector.input_size(settings.img_size)),
                     None)
        if found is None:
            found = (self.load or load_detector)(weights, settings.backend, settings.gpu_id, settings.img_size,
                                    class_names=settings.class_names, pin_memory=settings.pin_memory,
                                    threads=settings.cpu_threads, task=TASK_OF_OBJECT_TYPE[settings.object_type],
                                    **post)
            self.loaded[weights] = found
        return found.augmented() if settings.get("augment") else found


# ---------------------------------------------------------------- the loop's consumers

SHARDS_PER_LOOP = 64  # shards whose images share one loop (up to 131,072 images): its key maps are per loop


def _after(report: Callable[[int], None], before: int, done: int) -> None:
    report(before + done)


def image_items(keys: Sequence[str], detector: Detector | None, settings: Settings, report: Callable[[int], None],
                names: Sequence[str] = ()) -> Iterator[Batch | Unreadable]:
    """The loop's batches and unreadable images; report(images done) after each. `names`: the result key of each
    of `keys`, handed to the scorer as Batch.names."""
    name_of = dict(zip(keys, names))
    prepare = detector.letterbox if detector else (lambda image: letterbox(image, settings.img_size))
    on_device = device_letterbox(settings.get("gpu_decode", "auto"), detector)  # None: OpenCV in threads
    overlap = detector is not None and not detector.uses_cpu_cores  # the model on a GPU: decode meanwhile
    done = 0
    for item in batches(keys, prepare, settings.batch_size_per_gpu, settings.num_workers_per_gpu, on_device,
                        overlap):
        if isinstance(item, Unreadable):
            done += 1
        else:
            if name_of:
                item.names = [name_of[key] for key in item.keys]
            done += len(item.keys)
        yield item
        report(done)


def image_batches(keys: Sequence[str], detector: Detector | None, settings: Settings, report: Callable[[int], None],
                  unreadable: dict[str, str]) -> Iterator[Batch]:
    """The loop's batches (unreadable images go to `unreadable` with their reason); report(images done)."""
    for item in image_items(keys, detector, settings, report):
        if isinstance(item, Unreadable):
            unreadable[item.key] = item.reason
        else:
            yield item


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
    """What one worker needs to score and/or detect a shard in one pass over its images. Every batch's predictions
    come from its one forward (mining.base.Batch.forward): the scorer's, infer's and the side data's, wherever
    their models are one."""
    settings: dict                      # task → Settings ("mining" and/or "infer")
    scorer: object = None
    mining_detector: Detector | None = None
    infer_detector: Detector | None = None
    side: SideSpec | None = None        # what the mining shards' side files hold (side_spec)
    side_detector: Detector | None = None  # whose forward the side data come from (mining's own model)
    pool_seconds: float = 0.0           # spent pooling embeddings (their whole cost where the forward runs anyway)
    forward_seconds: float = 0.0        # forwards run for embeddings only (an algorithm that runs none)

    @property
    def loop_settings(self) -> Settings:  # batch size, decoding threads, img_size of the pass
        return self.settings.get("mining") or self.settings["infer"]

    @property
    def geometry(self) -> Detector | None:
        return self.mining_detector or self.infer_detector

    @property
    def side_embeddings(self) -> bool:
        return bool(self.side and self.side.embeddings and self.side_detector.embedding_dim)

    @property
    def side_boxes(self) -> bool:
        return bool(self.side and (self.side.boxes or self.side.class_counts))

    @property
    def infer_shares_forward(self) -> bool:
        """Infer's model is the scorer's, so infer reads the boxes of the scorer's own forward (not when infer's
        forwards are augmented: those are its own, made after the scorer's)."""
        return (self.infer_detector is not None and self.mining_detector is not None
                and self.infer_detector.model_key == self.mining_detector.model_key)

    def run(self, keys: Sequence[str], report: Callable[[int], None], unreadable: dict[str, str],
            names: Sequence[str] = ()) -> dict:
        """{"mining": scores, "infer": box records, "side": side data, "sizes": decoded sizes} of `keys` (the
        tasks of this pass; `names`: their result keys), images decoded once; unreadable ones go to `unreadable`."""
        (_, found), = self.run_shards([Shard(0, 0, keys, names)], report)
        unreadable.update(found.pop("unreadable"))
        return found

    def run_shards(self, shards: Sequence[Shard], report: Callable[[int], None]) -> Iterator[tuple[Shard, dict]]:
        """Each of `shards` with what `run` finds of its images (and "unreadable": key → reason), as soon as its
        last image is done. The images of SHARDS_PER_LOOP shards at a time go through one loop, so a batch may
        hold images of two shards: a shard's end leaves no batch part-empty, and each shard is done within a
        bounded number of images after its last one (executor.engine.loop); the loop's maps of keys stay bounded
        whatever the pool size."""
        done = 0
        for lo in range(0, len(shards), SHARDS_PER_LOOP):
            group = shards[lo:lo + SHARDS_PER_LOOP]
            yield from self._run_group(group, functools.partial(_after, report, done))
            done += sum(len(shard.keys) for shard in group)

    def _run_group(self, shards: Sequence[Shard], report: Callable[[int], None]) -> Iterator[tuple[Shard, dict]]:
        owner = {key: shard.index for shard in shards for key in shard.keys}
        found = {shard.index: {"mining": {}, "infer": {}, "side": {}, "sizes": {}, "unreadable": {}}
                 for shard in shards}
        left = {shard.index: len(shard.keys) for shard in shards}
        by_index = {shard.index: shard for shard in shards}
        keys = [key for shard in shards for key in shard.keys]
        names = [name for shard in shards for name in shard.names] if all(s.names for s in shards) else ()
        for item in image_items(keys, self.geometry, self.loop_settings, report, names):
            if isinstance(item, Unreadable):
                parts = {"unreadable": {item.key: item.reason}, "mining": {item.key: UNREADABLE_SCORE}}
                done = [item.key]
            else:
                parts, done = self.batch_results(item), item.keys
            for part, values in parts.items():
                for key, value in values.items():
                    found[owner[key]][part][key] = value
            for key in done:
                left[owner[key]] -= 1
                if not left[owner[key]]:
                    yield by_index[owner[key]], found.pop(owner[key])

    def batch_results(self, batch: Batch) -> dict[str, dict]:
        """What this pass finds of one batch, by part ("mining", "side", "infer", "sizes") and key."""
        out = {}
        with out_of_memory_hint(batch, self.loop_settings.batch_size_per_gpu):
            self.shared_forward(batch)
            if self.scorer is not None:
                out["mining"] = dict(zip(batch.keys, self.scorer.score(batch, self.mining_detector).tolist()))
            if self.side:
                out["side"] = self.side_data(batch)
            if self.infer_detector is not None:
                out["infer"] = self.infer_records(batch)
                out["sizes"] = {key: (int(box.width), int(box.height)) for key, box in zip(batch.keys, batch.boxes)}
            batch.forward = None  # keep no output of this batch alive into the next
        return out

    def shared_forward(self, batch: Batch) -> None:
        """Make first the batch's forward that more than the scorer reads (the side data, infer), so that the
        scorer reads it too: the whole network, where the scorer alone may run less of it (ALDD's class maps)."""
        started = time.perf_counter()
        forward = self.side_forward(batch)
        if forward is not None:
            self.pool_seconds += forward.pool_seconds
            if self.mining_detector is None:  # a forward for the side data alone (random)
                self.forward_seconds += time.perf_counter() - started - forward.pool_seconds
        elif self.infer_shares_forward:
            self.mining_detector.forward_of(batch)

    def side_forward(self, batch: Batch) -> Forward | None:
        """The batch's forward as the side data read it; None where they read none (photo hashes alone)."""
        if not (self.side_embeddings or self.side_boxes):
            return None
        return self.side_detector.forward_of(batch, embeddings=self.side_embeddings)

    def side_data(self, batch: Batch) -> dict[str, tuple]:
        """key → (embedding or None, detections at mining's conf_thres/max_det or None, (photo hash, thumbnail) or
        None), from the batch's forward and the decoded originals."""
        forward = self.side_forward(batch)
        embeddings = forward.embeddings if self.side_embeddings else None
        found = None
        if self.side_boxes:  # the side data outlive the batch: keep no prototypes alive
            found = [dataclasses.replace(det, masks=None) for det in self.side_detector.detections(forward)]
        photos = [photo(image) for image in batch.images] if self.side.hashes else None
        return {key: (None if embeddings is None else embeddings[i], None if found is None else found[i],
                      None if photos is None else photos[i])
                for i, key in enumerate(batch.keys)}

    def infer_records(self, batch: Batch) -> dict[str, list | dict]:
        """key → what infer-result.json says of it, from the batch's forward where infer's model made it."""
        names = self.infer_detector.names
        return {key: infer_record(det, box, names)
                for key, det, box in zip(batch.keys, self.infer_detector.predict(batch), batch.boxes)}


def open_scorer(settings: Settings, error_model: str = ""):
    """The mining scorer of `settings`; `error_model`: the fitted error model's file for a scorer that reads one
    ('' for the prior)."""
    from executor.pipeline.plan import load_error_model

    name = settings.mining_algorithm
    return get_scorer(name, load_error_model(error_model) if error_model else None, **scorer_params(name, settings))
