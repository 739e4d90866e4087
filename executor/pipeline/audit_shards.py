"""The label audit's pass over a labelled set (start.py audit) in mining's shards, workers and resume
(executor/pipeline/shards.py, workers.py): the set's images cut into shards, each worker (a GPU, or a CPU process)
forwarding its own shards in mining's loop and writing, per shard, the findings of every image's labels; the
parent reads the shards back into one audit.

A shard's fingerprint covers the model's bytes, the audit's settings and thresholds, the classes the whole set
labels and each image's own labels (classes, boxes, where each is written), so a rerun after a kill audits only
the shards not finished, and an edited label file audits its shard again.
"""

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass
from typing import Callable, Sequence

from executor.engine.evaluation import predict_candidates, sample_truth
from executor.errors import Interrupted, from_ctrl_c
from executor.pipeline.label_audit import Audit, assembled, labelled_classes, settings_record
from executor.pipeline.shards import Shard, ShardStore, auto_shard_size, file_sha256, plan, shards_of_rank
from executor.pipeline.workers import clear, run_workers
from executor.protocol.settings import Settings
from executor.shared import Sample
from mining import audit as rules
from mining.audit import Evidence, Finding, Fix

log = logging.getLogger(__name__)

KIND = "audit"


@dataclass(frozen=True)
class AuditPass:
    """One audit of `samples` (classes in the model's indices) by `weights` at the mining `settings` (img_size,
    iou_thres, gpu_id, cpu_processes, cpu_threads, batch_size_per_gpu, shard_size), its shards in `folder`."""
    weights: str
    settings: Settings
    samples: tuple[Sample, ...]
    confident: float
    support: float
    folder: str
    load: Callable | None = None  # (weights, settings) → detector; None: error_fit.labelled_pass_detector (a
    #                               benchmark hands its loaded one; one process only: it is not sent to workers)

    def images(self) -> dict[str, list[int]]:
        """Each image of the set (in the set's order) → the indices of its samples (an image listed twice has two)."""
        where: dict[str, list[int]] = {}
        for i, sample in enumerate(self.samples):
            where.setdefault(sample.image, []).append(i)
        return where

    def identity(self) -> dict:
        return {"task": KIND, "weights": file_sha256(self.weights), "img_size": self.settings.img_size,
                "labelled": sorted(labelled_classes(self.samples)),
                **settings_record(self.confident, self.support, self.settings.img_size, self.settings.iou_thres)}

    def shards(self, workers: int) -> list[Shard]:
        """The set's images in shards of shard_size (0: auto for `workers`), each image's labels its result key, so
        the fingerprint covers them."""
        where = self.images()
        labels = [labels_digest([self.samples[i] for i in where[key]]) for key in where]
        size = self.settings.shard_size or auto_shard_size(len(where), workers)
        return plan(list(where), size, labels)

    def store(self) -> ShardStore:
        return ShardStore(self.folder, KIND, self.identity())


def labels_digest(samples: Sequence[Sample]) -> str:
    digest = hashlib.sha256()
    for sample in samples:
        digest.update(json.dumps([sample.width, sample.height, sample.classes.tolist(), sample.boxes.tolist(),
                                  sample.sources or []]).encode())
    return digest.hexdigest()


def workers_of(settings: Settings) -> tuple[str, ...]:
    """One worker per GPU of gpu_id, else cpu_processes CPU workers ('')."""
    from executor.engine.device import visible_gpus

    gpus = visible_gpus(settings.gpu_id)
    return tuple(str(g) for g in gpus) if gpus else ("",) * max(1, settings.cpu_processes)


# ---------------------------------------------------------------- a worker: its shards forwarded and audited

def audit_worker(run: AuditPass, todo: Sequence[int], rank: int, world: int, device: str,
                 report: Callable[[int], None]) -> None:
    """Forward and audit the shards of `todo` that belong to worker `rank` of `world`, each shard's file written
    as soon as its images are done."""
    from executor.engine.device import batch_size
    from executor.pipeline.error_fit import labelled_pass_detector

    shards = run.shards(world)
    mine = shards_of_rank([shards[i] for i in todo], rank, world)
    if not mine:
        return
    settings = run.settings.replace(gpu_id=device, cpu_threads=max(1, run.settings.cpu_threads // world))
    detector = (run.load or labelled_pass_detector)(run.weights, settings)
    batch = batch_size(settings.batch_size_per_gpu, detector.device.type == "cuda")
    store, where, labelled = run.store(), run.images(), labelled_classes(run.samples)
    done = 0
    for shard in mine:
        indices = [i for key in shard.keys for i in where[key]]
        samples = [run.samples[i] for i in indices]
        unreadable: list[int] = []
        found = predict_candidates(detector, samples, run.support, batch,
                                   lambda f: report(done + int(f * len(shard.keys))), unreadable)
        records: dict[str, list] = {}
        for position, (sample, det) in enumerate(zip(samples, found)):
            if position not in unreadable:
                image = rules.audit_image(sample_truth(sample), det.xyxy, det.conf, det.cls, det.probs, labelled,
                                          run.confident, run.support)
                records.setdefault(sample.image, []).append([finding_record(f) for f in image])
        bad = {samples[p].image: "could not be decoded" for p in unreadable}
        sizes = {key: (run.samples[where[key][0]].width, run.samples[where[key][0]].height) for key in shard.keys}
        store.write_records(shard, records, bad, sizes)
        done += len(shard.keys)
        report(done)


def finding_record(finding: Finding) -> dict:
    """A finding as JSON (every number a Python int or float: the shard's line is JSON)."""
    evidence, fix = finding.evidence, finding.fix
    return {"kind": finding.kind, "score": float(finding.score), "annotation": int(finding.annotation),
            "cls": int(finding.cls), "box": [float(v) for v in finding.box],
            "evidence": None if evidence is None else {
                "box": [float(v) for v in evidence.box], "cls": int(evidence.cls), "iou": float(evidence.iou),
                "conf": None if evidence.conf is None else float(evidence.conf), "annotation": int(evidence.annotation)},
            "fix": {"action": fix.action, "cls": int(fix.cls), "annotation": int(fix.annotation),
                    "box": None if fix.box is None else [float(v) for v in fix.box]}}


def finding_of(record: dict) -> Finding:
    evidence, fix = record["evidence"], record["fix"]
    return Finding(record["kind"], record["score"], record["annotation"], record["cls"], tuple(record["box"]),
                   None if evidence is None else Evidence(**{**evidence, "box": tuple(evidence["box"])}),
                   Fix(**{**fix, "box": None if fix["box"] is None else tuple(fix["box"])}))


# ---------------------------------------------------------------- the parent: every shard done, then read back

def run_audit(run: AuditPass, class_names: Sequence[str], progress: Callable[[float], None],
              keep_shards: bool = False, split: str = "") -> Audit:
    """The audit of the whole set: the shards an earlier run finished reused, the others audited on every worker
    of the settings; then the shards read back into one audit and (unless `keep_shards`) removed. A Ctrl-C raises
    Interrupted, saying what is kept for a rerun."""
    devices = workers_of(run.settings)
    store, shards = run.store(), run.shards(len(devices))
    todo = [shard.index for shard in shards if not store.complete(shard)]
    total = sum(len(s.keys) for s in shards)
    done_before = total - sum(len(shards[i].keys) for i in todo)
    if done_before:
        log.info("audit: %d of %d shards are complete from an earlier run with the same model, settings and labels; "
                 "auditing the other %d", len(shards) - len(todo), len(shards), len(todo))
    try:
        if todo:
            run_workers(audit_worker, (run, todo), devices, run.folder, done_before, total, progress)
    except BaseException as exc:
        if not from_ctrl_c(exc):
            raise
        clear(run.folder)
        kept = [shard for shard in shards if store.complete(shard)]
        raise Interrupted(run.folder, len(kept), len(shards), sum(len(s.keys) for s in kept)) from None
    found = read_back(run, store, len(shards))
    if not keep_shards:
        shutil.rmtree(run.folder, ignore_errors=True)
    return assembled(run.samples, found, class_names, split)


def read_back(run: AuditPass, store: ShardStore, count: int) -> list[list[Finding] | None]:
    """Each sample's findings from the shards (None: its image could not be decoded)."""
    found: list[list[Finding] | None] = [None] * len(run.samples)
    where = run.images()
    for image in store.records(count):
        if image.record is None:
            continue
        for i, records in zip(where[image.key], image.record):
            found[i] = [finding_of(record) for record in records]
    return found
