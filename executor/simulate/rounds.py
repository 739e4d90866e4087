"""One round of a simulation: training and evaluation through Quarry's own trainer wrapper, the starting weights'
evaluation, mining (or a baseline) over the unlabelled pool, and the initial random draw.
"""

import logging
import os
import shutil
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

from executor.protocol.writers import atomic_write_text
from executor.simulate import bootstrap
from executor.simulate.plan import Data, split_algorithm

log = logging.getLogger(__name__)


Progress = Callable[[float], None]


# ---------------------------------------------------------------- one round: train + evaluate, mine

@dataclass
class Trained:
    weights: str
    mAP50: float
    mAP50_95: float
    mAR50: float
    train_s: float
    eval_s: float
    matches: str = ""   # the val predictions' match table (executor/simulate/bootstrap.py); "" when none


class QuarryTrainer:
    """Round training with executor.pipeline.training.run_training, evaluation with its Evaluator on the val split.

    The training validates on `train_val_index` (Ultralytics' per-epoch val and best epoch, result.yaml): the
    whole val split unless --train-val names fewer images; the round's mAP is always on the whole split."""

    def __init__(self, data: Data, config: Mapping, start_weights: str, train_val_index: str = ""):
        self.data, self.config, self.start_weights = data, dict(config), start_weights
        self.train_val_index = train_val_index or data.val_index

    def settings(self, seed: int):
        from executor.protocol.settings import build_settings

        return build_settings("training", {**self.config, "class_names": self.data.class_names,
                                           "pretrained_model_params": [self.start_weights], "seed": seed})

    def __call__(self, folder: str, images: Sequence[str], seed: int, progress: Progress) -> Trained:
        from executor.pipeline.job import Job
        from executor.pipeline.training import Evaluator, run_training
        from executor.protocol.monitor import span

        index = os.path.join(folder, "train-index.tsv")
        atomic_write_text(index, "".join(f"{p}\t{self.data.annotation[p]}\n" for p in images))
        settings = self.settings(seed)
        models = os.path.join(folder, "models")
        job = Job(training_index=index, val_index=self.train_val_index, models_out=models,
                  training_result=os.path.join(models, "result.yaml"),
                  tensorboard_dir=os.path.join(folder, "tensorboard"), work_dir=os.path.join(folder, "work"),
                  models_dir="", weights_dirs=())
        started = time.monotonic()
        run_training(job, settings, span(progress, 0.0, 0.9))
        train_s = time.monotonic() - started
        weights = os.path.join(models, "best", "best.pt")
        started = time.monotonic()
        evaluator = Evaluator(self.data.val_samples, self.data.class_names, settings,
                              dict(settings.evaluate_config), 2 * settings.batch_size_per_gpu)
        predictions: list = []
        metrics = evaluator(weights, span(progress, 0.9, 1.0), keep=predictions)
        matches = os.path.join(models, "val-matches.npz")  # what the bootstrap over val images needs of this model
        bootstrap.save(matches, bootstrap.match_table(self.data.val_samples, predictions, len(self.data.class_names)))
        eval_s = time.monotonic() - started
        # what mining and reproduction need stays (train-index.tsv, best.pt, result.yaml); the YOLO export,
        # Ultralytics' checkpoints and the ONNX attachment go (tens of MB per round)
        shutil.rmtree(os.path.join(folder, "work"), ignore_errors=True)
        shutil.rmtree(os.path.join(models, "attachments"), ignore_errors=True)
        for name in os.listdir(models):
            if os.path.isfile(os.path.join(models, name)) and name.endswith(".onnx"):
                os.unlink(os.path.join(models, name))
        return Trained(weights, float(metrics.mAP), float(metrics.mAP50_95), float(metrics.mAR), train_s, eval_s,
                       matches)


def evaluate_start(weights: str, data: Data, config: Mapping) -> dict | None:
    """The starting weights before any training, on the val split (executor.engine.evaluation.evaluate): the data's
    classes found by name among the model's (case-insensitive); None when one of them is not there."""
    from dataclasses import replace

    import numpy as np

    from executor.engine.evaluation import VAL_IOU, VAL_MAX_DET, evaluate
    from executor.engine.loading import load_detector
    from executor.protocol.settings import build_settings

    settings = build_settings("training", dict(config))
    thresholds = dict(settings.evaluate_config)
    detector = load_detector(weights, "torch", settings.gpu_id.split(",")[0], settings.img_size,
                             conf_thres=thresholds["conf_thr"], iou_thres=VAL_IOU, max_det=VAL_MAX_DET)
    index = {name.strip().lower(): i for i, name in enumerate(detector.names)}
    missing = [n for n in data.class_names if n.strip().lower() not in index]
    if missing:
        log.info("the start weights have no class %s: no start reference in the plot", ", ".join(missing))
        return None
    to_model = np.array([index[n.strip().lower()] for n in data.class_names], np.int64)
    samples = [replace(s, classes=to_model[s.classes]) for s in data.val_samples]
    started = time.monotonic()
    metrics = evaluate(detector, samples, thresholds["iou_thr"], thresholds["conf_thr"],
                       2 * settings.batch_size_per_gpu)
    return {"mAP50": round(float(metrics.mAP), 6), "mAP50_95": round(float(metrics.mAP50_95), 6),
            "mAR50": round(float(metrics.mAR), 6), "eval_s": round(time.monotonic() - started, 2),
            "classes": [detector.names[i] for i in to_model]}


def read_ranking(path: str) -> list[str]:
    with open(path, encoding="utf-8") as handle:
        return [line.split("\t")[0] for line in handle if line.strip()]


def count_ranking(found: Iterable, keys: Sequence[str], names: Sequence[str], seed: int) -> list[tuple[str, float]]:
    """The `detections` baseline from the infer task's detections (pipeline.shards.Detected by key): the box
    count, ties broken by the seed's random score of each key's name (its path relative to the pool root; in
    [0, 0.5), so the count always decides first)."""
    from mining.random_score import random_scores

    boxes = {image.key: len(image.record or ()) for image in found}
    ties = random_scores(names, seed)
    return [(key, boxes.get(key, 0) + 0.5 * float(tie)) for key, tie in zip(keys, ties)]


def mine(algorithm: str, weights: str, candidates: Sequence[str], folder: str, data: Data, config: Mapping,
         seed: int, progress: Progress, labelled: Sequence[str] = ()) -> list[str]:
    """`candidates` ranked best first by `algorithm` ('name' or 'name:selection') with the model `weights`
    (Quarry's mining task, told which images are labelled already; for the `detections` baseline, its infer
    task); the ranking is kept in folder/mining.tsv (what a rerun resumes from). The mining report is off unless
    --set report=true (then folder/mining-report.html)."""
    from executor.pipeline.job import MINING_SCORES_NAME, REPORT_NAME, Job
    from executor.pipeline.plan import make_plan
    from executor.pipeline.tasks import run
    from executor.protocol.writers import ranked, write_ranked
    from executor.runtime import outer_ranks

    ranking = os.path.join(folder, "mining.tsv")
    if os.path.isfile(ranking):  # mined before a kill (written atomically): the same model, the same candidates
        return read_ranking(ranking)
    os.makedirs(folder, exist_ok=True)
    base = {"report": False, **config, "model_params_path": [weights], "class_names": data.class_names,
            "seed": seed}
    name, selection = split_algorithm(algorithm)
    shards = os.path.join(folder, "shards")
    names = [data.rel(path) for path in candidates]  # random and CALD draw by them: the same wherever the pool is
    if algorithm == "detections":  # the tasks return values: no result file to read back
        job = Job(candidates=list(candidates), names=list(candidates), models_dir="", shards_dir=shards,
                  work_dir=folder, outer=outer_ranks())
        found = run(make_plan(["infer"], job, base), progress)["infer"]
        scored = ranked(count_ranking(found, candidates, names, seed))
    else:
        mining = {**base, "mining_algorithm": name, **({"selection": selection} if selection else {})}
        job = Job(candidates=list(candidates), names=names, models_dir="", shards_dir=shards, work_dir=folder,
                  labeled=list(labelled), outer=outer_ranks(), report_html=os.path.join(folder, REPORT_NAME),
                  mining_scores=os.path.join(folder, MINING_SCORES_NAME))
        scored = [(found.key, found.score) for found in run(make_plan(["mining"], job, mining), progress)["mining"]]
    write_ranked(ranking, scored)
    shutil.rmtree(shards, ignore_errors=True)
    return [key for key, _ in scored]


def initial_draw(data: Data, seed: int, count: int) -> list[str]:
    """N0 pool images at random: depends only on (seed, relative path), never on order or location."""
    from mining.base import image_seed

    return sorted(sorted(data.pool, key=lambda p: image_seed(seed, "initial\x00" + data.rel(p)))[:count])
