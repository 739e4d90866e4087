"""The cross-fitted label audit (start.py audit --folds K): the set's images cut into K folds (a seeded shuffle),
K models trained, each on the other K - 1 folds, and each fold audited by the model that never saw it. A model
audits best the images it did not train on: it learns its training labels' mistakes and stops accusing them
(cleanlab's advice for finding label issues). K trainings cost K times one; the audit's own pass is one forward
per image as without folds.

The folds' labels are written once as ymir ARK files (`labels/`) with an index per fold, so the training task's
own recipe reads them. A fold's trained model is kept under `fold-<k>/` with the fingerprint of what made it
(its training images and labels, the start weights, the training settings, the seed): a rerun of the same command
retrains only the folds whose fingerprint changed or that did not finish.
"""

import hashlib
import json
import logging
import os
import random
import shutil
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

from executor.pipeline.audit_shards import labels_digest
from executor.pipeline.label_audit import Audit, merged
from executor.pipeline.shards import file_sha256
from executor.protocol.writers import atomic_write_text
from executor.shared import Sample

log = logging.getLogger(__name__)

FOLD_FILE = "fold.json"
Progress = Callable[[float], None]
# trainer(folder, train index, held-out index, held-out samples, seed, progress) → (weights, the held-out mAP50)
Trainer = Callable[[str, str, str, Sequence[Sample], int, Progress], tuple[str, float | None]]
# audit(weights, held-out samples, fold number from 1, progress) → the fold's audit
FoldAudit = Callable[[str, Sequence[Sample], int, Progress], Audit]


@dataclass(frozen=True)
class Fold:
    number: int               # from 1
    held_out: tuple[int, ...]  # indices of the samples it audits (the others are its model's training set)


def cut_folds(samples: Sequence[Sample], folds: int, seed: int) -> list[Fold]:
    """`folds` folds of the set's images, as equal as can be, by a seeded shuffle of the images (the samples of one
    image stay in one fold)."""
    images = sorted({sample.image for sample in samples})
    if not 2 <= folds <= len(images):
        raise ValueError(f"--folds {folds}: between 2 and the set's {len(images)} images")
    random.Random(seed).shuffle(images)
    fold_of = {image: i % folds for i, image in enumerate(images)}
    return [Fold(k + 1, tuple(i for i, s in enumerate(samples) if fold_of[s.image] == k)) for k in range(folds)]


def write_ark(folder: str, samples: Sequence[Sample]) -> list[str]:
    """Each sample's boxes as a ymir ARK file (`class, xmin, ymin, xmax, ymax`, inclusive corners) in `folder`;
    returns their paths, in the samples' order."""
    os.makedirs(folder, exist_ok=True)
    paths = []
    for i, sample in enumerate(samples):
        lines = [f"{int(c)},{x1:.2f},{y1:.2f},{x2 - 1:.2f},{y2 - 1:.2f}\n"
                 for c, (x1, y1, x2, y2) in zip(sample.classes, sample.boxes.tolist())]
        paths.append(os.path.join(folder, f"{i:06d}.txt"))
        atomic_write_text(paths[-1], "".join(lines))
    return paths


def write_index(path: str, samples: Sequence[Sample], arks: Sequence[str], indices: Sequence[int]) -> str:
    atomic_write_text(path, "".join(f"{samples[i].image}\t{arks[i]}\n" for i in indices))
    return path


def fold_fingerprint(samples: Sequence[Sample], train: Sequence[int], start_weights: str, settings: Mapping,
                     seed: int) -> str:
    digest = hashlib.sha256(json.dumps({"start": file_sha256(start_weights), "settings": dict(settings),
                                        "seed": seed}, sort_keys=True, default=str).encode())
    for i in train:
        digest.update(samples[i].image.encode("utf-8", "surrogateescape") + labels_digest([samples[i]]).encode())
    return digest.hexdigest()


def cross_fit(samples: Sequence[Sample], folds: int, seed: int, folder: str, start_weights: str, settings: Mapping,
              train: Trainer, audit: FoldAudit, progress: Progress = lambda f: None) -> tuple[Audit, list[dict]]:
    """The audit of `samples` fold by fold, each by a model trained (`train`, from `start_weights` with the training
    `settings`) on the other folds; returns the merged audit (each finding's split 'fold k') and per fold what
    made its model (its number, images, training images, weights, held-out mAP50, whether it was reused)."""
    cut = cut_folds(samples, folds, seed)
    arks = write_ark(os.path.join(folder, "labels"), samples)
    parts, about = [], []
    for fold in cut:
        share = 1 / len(cut)
        at = (fold.number - 1) * share
        held = [samples[i] for i in fold.held_out]
        held_out = set(fold.held_out)
        trained = [i for i in range(len(samples)) if i not in held_out]
        weights, mAP50, reused = fold_model(fold, samples, arks, trained, folder, start_weights, settings, seed,
                                            train, lambda f: progress(at + 0.8 * share * f))
        part = audit(weights, held, fold.number, lambda f: progress(at + share * (0.8 + 0.2 * f)))
        parts.append(part)
        about.append({"fold": fold.number, "images": part.images, "trained_on": len({samples[i].image
                                                                                     for i in trained}),
                      "weights": weights, "mAP50": mAP50, "reused": reused})
        log.info("fold %d of %d: %d images audited by a model trained on %d (held-out mAP50 %s)%s", fold.number,
                 len(cut), part.images, about[-1]["trained_on"], "n/a" if mAP50 is None else f"{mAP50:.3f}",
                 " (model reused)" if reused else "")
    return merged(parts), about


def fold_model(fold: Fold, samples: Sequence[Sample], arks: Sequence[str], trained: Sequence[int], folder: str,
               start_weights: str, settings: Mapping, seed: int, train: Trainer, progress: Progress
               ) -> tuple[str, float | None, bool]:
    """(weights, held-out mAP50, reused) of the fold's model: the one a rerun finished before when its
    fingerprint matches, else trained now."""
    home = os.path.join(folder, f"fold-{fold.number}")
    record = os.path.join(home, FOLD_FILE)
    fingerprint = fold_fingerprint(samples, trained, start_weights, settings, seed)
    try:
        with open(record, encoding="utf-8") as handle:
            done = json.load(handle)
        if done["fingerprint"] == fingerprint and os.path.isfile(done["weights"]):
            return done["weights"], done["mAP50"], True
    except (OSError, ValueError, KeyError):
        pass
    os.makedirs(home, exist_ok=True)
    train_index = write_index(os.path.join(home, "train-index.tsv"), samples, arks, trained)
    held_index = write_index(os.path.join(home, "held-out-index.tsv"), samples, arks, fold.held_out)
    weights, mAP50 = train(home, train_index, held_index, [samples[i] for i in fold.held_out], seed, progress)
    atomic_write_text(record, json.dumps({"fingerprint": fingerprint, "weights": weights, "mAP50": mAP50}) + "\n")
    return weights, mAP50, False


def fold_trainer(config: Mapping, class_names: Sequence[str], start_weights: str) -> Trainer:
    """The training task's recipe (the training template under `config`) from `start_weights`, in the model's
    classes, as the simulator trains its rounds: Ultralytics validates nothing, so the held-out fold never picks
    the model (the last epoch's weights are it); no ONNX, no error model, no label audit; our evaluation on the
    held-out fold gives its mAP50."""
    def train(home: str, train_index: str, held_index: str, held: Sequence[Sample], seed: int,
              progress: Progress) -> tuple[str, float | None]:
        from executor.pipeline.job import training_job
        from executor.pipeline.training import run_training
        from executor.protocol.settings import build_settings

        settings = build_settings("training", {**config, "class_names": list(class_names), "seed": seed,
                                               "pretrained_model_params": [os.path.abspath(start_weights)],
                                               "label_audit": "off"})
        job = training_job(home, train_index, held_index)
        metrics = run_training(job, settings, progress, ultralytics_val=False, onnx=False, error_model=False)
        shutil.rmtree(job.work_dir, ignore_errors=True)  # the YOLO export and Ultralytics' checkpoints
        return os.path.join(job.models_out, "best", "best.pt"), round(float(metrics.mAP), 6)

    return train
