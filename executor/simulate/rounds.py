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
    """Round training with executor.pipeline.training.run_training, asked for less than the platform asks: no
    validation by Ultralytics (the last epoch's weights are the model: no model selection on any split), no ONNX
    export, and its own evaluation of the model on the val split handed back with the val predictions, so the
    round's mAP and the bootstrap's match table come from that one evaluation.

    The training evaluates on `train_val_index` (result.yaml): the whole val split unless --train-val names fewer
    images; then the round's mAP needs a second evaluation, on the whole split."""

    def __init__(self, data: Data, config: Mapping, start_weights: str, train_val_index: str = ""):
        self.data, self.config, self.start_weights = data, dict(config), start_weights
        self.train_val_index = train_val_index or data.val_index

    def settings(self, seed: int):
        from executor.protocol.settings import build_settings

        return build_settings("training", {**self.config, "class_names": self.data.class_names,
                                           "pretrained_model_params": [self.start_weights], "seed": seed})

    def __call__(self, folder: str, images: Sequence[str], seed: int, progress: Progress) -> Trained:
        from executor.pipeline.job import training_job
        from executor.pipeline.training import run_training
        from executor.protocol.monitor import span

        index = os.path.join(folder, "train-index.tsv")
        atomic_write_text(index, "".join(f"{p}\t{self.data.annotation[p]}\n" for p in images))
        settings = self.settings(seed)
        job = training_job(folder, index, self.train_val_index)
        models = job.models_out
        whole = self.train_val_index == self.data.val_index
        predictions: list = []
        started = time.monotonic()
        metrics = run_training(job, settings, span(progress, 0.0, 1.0 if whole else 0.9), ultralytics_val=False,
                               onnx=False, val_predictions=predictions if whole else None, error_model=False)
        train_s = time.monotonic() - started
        weights = os.path.join(models, "best", "best.pt")
        started = time.monotonic()
        if not whole:
            metrics = self.evaluate(weights, settings, predictions, span(progress, 0.9, 1.0))
        if len(predictions) != len(self.data.val_samples):  # (both read the one val index, in its order)
            raise RuntimeError(f"{len(predictions)} val predictions for {len(self.data.val_samples)} val images")
        matches = os.path.join(models, "val-matches.npz")  # what the bootstrap over val images needs of this model
        bootstrap.save(matches, bootstrap.match_table(self.data.val_samples, predictions, len(self.data.class_names)))
        eval_s = time.monotonic() - started
        # what mining and reproduction need stays (train-index.tsv, best.pt, result.yaml); the YOLO export and
        # Ultralytics' checkpoints go (tens of MB per round)
        shutil.rmtree(os.path.join(folder, "work"), ignore_errors=True)
        return Trained(weights, float(metrics.mAP), float(metrics.mAP50_95), float(metrics.mAR), train_s, eval_s,
                       matches)

    def evaluate(self, weights: str, settings, keep: list, progress: Progress):
        """The model on the whole val split (its predictions into `keep`), as run_training evaluates."""
        from executor.pipeline.training import Evaluator

        evaluator = Evaluator(self.data.val_samples, self.data.class_names, settings, dict(settings.evaluate_config),
                              2 * settings.batch_size_per_gpu)
        return evaluator(weights, progress, keep=keep)


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


def ensure_error_model(algorithm: str, weights: str, data: Data, config: Mapping, progress: Progress) -> None:
    """For an algorithm that reads one (unless `errors_prior`), the error model of `weights` beside them (what
    mining then finds), fitted on the fit split unless one is there; without a fit split the arm mines with the
    prior (mining says so)."""
    from executor.pipeline.error_fit import fit_weights
    from executor.protocol.rules import to_bool
    from mining import reads_error_model
    from mining.errors import errors_file

    if not reads_error_model(algorithm) or to_bool("errors_prior", config.get("errors_prior", False)) \
            or os.path.isfile(errors_file(weights)):
        return
    if not data.fit_samples:
        log.warning("no fit split (data.yaml 'test' or the data folder's fit-index.tsv): the error model of %s is "
                    "the prior", weights)
        return
    fit_weights(weights, data.fit_samples, data.fit_source, dict(config), progress)


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


class SharedForwards:
    """One forward per batch of the pool for the arms that mine with one model (round 1: every arm of a seed mines
    with the shared round-0 model): the whole-network forwards (executor.engine.detector.Forward) the first arm
    makes are kept, and the next arms' detectors read them instead of running the network again, so scores that
    are functions of the same detections (entropy with any aggregation or conf_thres, the `detections` baseline's
    box count) cost one forward between them. Exact: a forward is reused only by the same model
    (Detector.model_key: weights, input size, device, augmentation) for byte-identical network inputs. Forwards
    made for class maps alone (ALDD) or with embeddings (selection diverse), and the extra views CALD forwards, are
    not kept: those arms run their own. Only one model's forwards are kept (about 4 x (4 + classes) x anchors
    bytes per image: 75 kB at 320 px with 5 classes). Workers in other processes (cpu_processes > 1, several GPUs) load
    their own detectors and share nothing."""

    def __init__(self, load: Callable | None = None):
        self.load_detector = load  # executor.engine.loading.load_detector's signature (None: that function)
        self.weights: str | None = None
        self.forwards: dict = {}

    def models(self, weights: str | None):
        """A Models (executor.pipeline.passes) for one mining run with `weights`, sharing the forwards of the runs
        before it with the same weights (those of other weights are dropped); None, keeping nothing, for None (a
        model no other arm mines with)."""
        from executor.pipeline.passes import Models

        if weights != self.weights:
            self.weights, self.forwards = weights, {}
        return None if weights is None else Models(load=self.load)

    def load(self, *args, **kwargs):
        from executor.engine.loading import load_detector

        detector = (self.load_detector or load_detector)(*args, **kwargs)
        own = detector.forward_of

        def forward_of(batch, maps_only: bool = False, embeddings: bool = False):
            if maps_only or embeddings:
                return own(batch, maps_only, embeddings)
            key = (detector.model_key, batch_digest(batch))
            if key not in self.forwards:
                self.forwards[key] = own(batch)
            batch.forward = self.forwards[key]
            return batch.forward

        detector.forward_of = forward_of  # (with_postprocess's copies keep it: they share the network)
        return detector


def batch_digest(batch) -> str:
    """A digest of a batch's network inputs (a numpy array, or a tensor on the detector's device) and of how its
    originals map into them (the detections' way back to original pixels)."""
    import hashlib

    import numpy as np

    canvases = batch.canvases
    array = np.ascontiguousarray(canvases.cpu().numpy() if hasattr(canvases, "cpu") else canvases)
    digest = hashlib.blake2b(array.data, digest_size=16)
    digest.update(repr((array.shape, list(batch.boxes))).encode())
    return digest.hexdigest()


def mine(algorithm: str, weights: str, candidates: Sequence[str], folder: str, data: Data, config: Mapping,
         seed: int, progress: Progress, labelled: Sequence[str] = (), models=None) -> list[str]:
    """`candidates` ranked best first by `algorithm` ('name' or 'name:selection') with the model `weights`
    (Quarry's mining task, told which images are labelled already; for the `detections` baseline, its infer
    task); the ranking is kept in folder/mining.tsv (what a rerun resumes from). The mining report is off unless
    --set report=true (then folder/mining-report.html). `models`: where the run loads its detector
    (executor.pipeline.passes.Models; SharedForwards.models shares forwards between arms)."""
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
        found = run(make_plan(["infer"], job, base), progress, models)["infer"]
        scored = ranked(count_ranking(found, candidates, names, seed))
    else:
        mining = {**base, "mining_algorithm": name, **({"selection": selection} if selection else {})}
        job = Job(candidates=list(candidates), names=names, models_dir="", shards_dir=shards, work_dir=folder,
                  labeled=list(labelled), outer=outer_ranks(), report_html=os.path.join(folder, REPORT_NAME),
                  mining_scores=os.path.join(folder, MINING_SCORES_NAME))
        scored = [(found.key, found.score) for found in run(make_plan(["mining"], job, mining), progress,
                                                            models)["mining"]]
    write_ranked(ranking, scored)
    shutil.rmtree(shards, ignore_errors=True)
    return [key for key, _ in scored]


def initial_draw(data: Data, seed: int, count: int) -> list[str]:
    """N0 pool images at random: depends only on (seed, relative path), never on order or location."""
    from mining.base import image_seed

    return sorted(sorted(data.pool, key=lambda p: image_seed(seed, "initial\x00" + data.rel(p)))[:count])
