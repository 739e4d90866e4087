"""Does mining pay? An active-learning loop on a labelled pool, with Quarry's own training, evaluation and mining.

    python start.py simulate --data DATA --weights W.pt --algorithms random,entropy \\
        --initial 100 --budget 100 --rounds 3 --seeds 3 --epochs 5 --img-size 320 --out DIR

Per seed, N0 pool images are drawn at random (the same N0 for every algorithm of that seed) and a model is
trained on them from the starting weights (round 0, shared by the algorithms of the seed). Then, per algorithm,
`rounds` times: mine the rest of the pool with the model of the previous round, reveal the labels of the top
`budget`, train again from the starting weights on everything labelled so far, and evaluate mAP50 and mAP50-95
on the fixed val split. So the curve of an algorithm has rounds + 1 points: N0, N0 + B, ..., N0 + rounds * B.

Everything Quarry ships is used as it is: `executor.pipeline.training.run_training` trains, its `Evaluator` (our
pycocotools evaluation, batched like Ultralytics' validator) measures, `executor.pipeline.tasks.run(["mining"])` ranks.
The baseline `detections` (most boxes at conf_thres first) counts the boxes of Quarry's own infer task.

Outputs in --out: simulation.json (plan + every round), simulation.csv (one row per round), simulation.md (the
table), simulation.png (mAP against labelled images), and runs/ (per round: the train index, best.pt, the
mining ranking). Every finished round is written atomically; a rerun with the same plan continues where a kill
stopped it (rounds, seeds and algorithms may change between runs; the data, weights, N0, B and training
settings may not).
"""
import argparse
import csv
import hashlib
import io
import json
import logging
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

from executor.errors import ConfigError, DatasetError, ModelError, QuarryError, one_line
from executor.pipeline.shards import file_sha256
from executor.protocol.writers import atomic_write_text

log = logging.getLogger(__name__)

BASELINES = ("detections",)   # offered besides mining.SCORERS, not registered there
SHARED_ROUND = "initial"       # round 0's training belongs to every algorithm of a seed
FORMAT_VERSION = 1
# keys the simulation sets itself (the flag or source to use instead)
OWNED_KEYS = {"pretrained_model_params": "--weights", "model_params_path": "--weights", "seed": "--seeds",
              "mining_algorithm": "--algorithms"}
NAMES_FILES = ("names.txt", "classes.txt", "labels.txt")
Progress = Callable[[float], None]


def algorithm_names() -> list[str]:
    from mining import SCORERS

    return [*SCORERS, *BASELINES]


# ---------------------------------------------------------------- the plan

@dataclass(frozen=True)
class Plan:
    data: str                        # a data.yaml, or a folder with train-index.tsv and val-index.tsv
    weights: str                     # the starting weights (.pt) of every training
    out: str
    algorithms: tuple[str, ...] = ("random", "entropy")
    initial: int = 100               # N0
    budget: int = 100                # B per round
    rounds: int = 3                  # R mining rounds after round 0
    seeds: tuple[int, ...] = (0,)
    config: Mapping = field(default_factory=dict)  # template keys (training and mining), flags and --set
    train_val: int = 0               # val images the training itself validates on (0 = all); mAP uses all

    def check(self) -> None:
        known = algorithm_names()
        if not self.algorithms:
            raise ConfigError("--algorithms: no algorithm given")
        for spec in self.algorithms:
            name, selection = split_algorithm(spec)
            if name not in known:
                raise ConfigError(f"--algorithms: unknown algorithm {name!r}; expected some of {', '.join(known)} "
                                  "(a mining algorithm may name a selection mode: entropy:diverse)")
            if selection and name in BASELINES:
                raise ConfigError(f"--algorithms {spec!r}: the {name} baseline has no selection modes")
            if selection:
                from executor.protocol.settings import RULES

                try:
                    RULES["selection"]("selection", selection)
                except ConfigError as exc:
                    raise ConfigError(f"--algorithms {spec!r}: {exc}") from None
        for flag, value, low in (("--initial", self.initial, 1), ("--budget", self.budget, 1),
                                 ("--rounds", self.rounds, 1), ("--train-val", self.train_val, 0)):
            if not isinstance(value, int) or value < low:
                raise ConfigError(f"{flag}: {value!r} is not allowed; expected an integer >= {low}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or any(s < 0 for s in self.seeds):
            raise ConfigError(f"--seeds: {self.seeds!r}: expected a count (3 = seeds 0, 1, 2) or distinct "
                              "non-negative seeds such as 0,7")
        for key, flag in OWNED_KEYS.items():
            if key in self.config:
                raise ConfigError(f"--set {key}: set by the simulation; use {flag}")
        if not os.path.isfile(self.weights):
            raise ModelError(f"--weights: file not found: {self.weights}")
        if not self.weights.lower().endswith((".pt", ".pth")):
            raise ModelError(f"--weights {self.weights}: training needs an Ultralytics .pt checkpoint")
        if not self.out:
            raise ConfigError("--out: no output folder given")

    @property
    def labelled_max(self) -> int:
        return self.initial + self.rounds * self.budget


def split_algorithm(spec: str) -> tuple[str, str]:
    """'entropy' → ('entropy', ''); 'entropy:diverse' → ('entropy', 'diverse') (the mining key `selection`)."""
    name, _, selection = spec.partition(":")
    return name.strip(), selection.strip()


def parse_seeds(text: str) -> tuple[int, ...]:
    """'3' → (0, 1, 2); '0,7' → (0, 7)."""
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    try:
        numbers = [int(p) for p in parts]
    except ValueError:
        raise ConfigError(f"--seeds: {text!r} is not a count or a comma-separated list of seeds") from None
    if len(parts) == 1 and "," not in str(text):
        if numbers[0] < 1:
            raise ConfigError(f"--seeds: {text!r}: the count must be at least 1")
        return tuple(range(numbers[0]))
    return tuple(numbers)


def parse_sets(items: Sequence[str]) -> dict:
    """--set KEY=VALUE (values read as YAML scalars/lists) for any template key; unknown keys are a ConfigError."""
    import yaml

    from executor.protocol.settings import close_keys
    from executor.protocol.templates import load_template

    known = set(load_template("training")) | set(load_template("mining")) | set(load_template("infer")) | \
        {"gpu_id", "class_names", "evaluate_config"}
    values = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        if key not in known:
            close = close_keys(key, known)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ConfigError(f"--set {key}: not a key of the training, mining or infer template{hint}")
        try:
            values[key] = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            raise ConfigError(f"--set {item!r}: cannot read the value") from None
        if key == "class_names" and isinstance(values[key], str):
            values[key] = [n.strip() for n in values[key].split(",") if n.strip()]
    return values


# ---------------------------------------------------------------- the data

@dataclass
class Data:
    pool: list[str]                 # usable pool images (absolute paths as indexed), sorted
    annotation: dict[str, str]      # pool image → its annotation file (for the per-round train index)
    val_index: str
    val_samples: list               # executor.shared.Sample of the val split
    class_names: list[str]
    root: str                       # pool paths are recorded relative to this folder
    left_out: dict[str, str]        # pool images not used, and why
    fingerprint: str                # of every pool and val image with its boxes

    def rel(self, path: str) -> str:
        return os.path.relpath(path, self.root)

    def abs(self, rel: str) -> str:
        """The pool path recorded as `rel` (exactly as the index lists it)."""
        if not hasattr(self, "_by_rel"):
            self._by_rel = {self.rel(p): p for p in self.pool}
        return self._by_rel[rel]


def read_names_file(folder: str) -> list[str]:
    for name in NAMES_FILES:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as handle:
                return [line.split("\t")[-1].strip() for line in handle if line.strip()]
    return []


def yaml_names(data: Mapping, where: str) -> list[str]:
    names = data.get("names")
    if isinstance(names, dict):
        try:
            order = sorted(names, key=int)
        except (TypeError, ValueError):
            raise DatasetError(f"{where}: 'names' keys must be class indices 0, 1, ...") from None
        if [int(k) for k in order] != list(range(len(order))):
            raise DatasetError(f"{where}: 'names' must number the classes 0..{len(order) - 1} without gaps")
        names = [names[k] for k in order]
    if not isinstance(names, list) or not names:
        raise DatasetError(f"{where}: 'names' must list the class names")
    if data.get("nc") is not None and int(data["nc"]) != len(names):
        log.warning("%s: nc %s but %d names; the names are used", where, data["nc"], len(names))
    return [str(n) for n in names]


def split_images(root: str, entry, where: str) -> list[str]:
    """Image paths of a data.yaml split entry: folders (recursive), .txt lists, or a list of those."""
    from ultralytics.data.utils import IMG_FORMATS

    entries = entry if isinstance(entry, (list, tuple)) else [entry]
    found: list[str] = []
    for item in entries:
        if not isinstance(item, str) or not item.strip():
            raise DatasetError(f"{where}: {item!r} is not a folder or list file")
        path = os.path.normpath(item if os.path.isabs(item) else os.path.join(root, item))
        if os.path.isdir(path):
            for folder, _, names in os.walk(path):
                found += [os.path.join(folder, n) for n in names if n.rsplit(".", 1)[-1].lower() in IMG_FORMATS]
        elif os.path.isfile(path) and path.lower().endswith(".txt"):
            with open(path, encoding="utf-8") as handle:
                for line in handle:
                    line = line.strip()
                    if line:
                        base = os.path.dirname(path) if line.startswith("./") else root
                        found.append(os.path.normpath(line if os.path.isabs(line) else os.path.join(base, line)))
        else:
            raise DatasetError(f"{where}: {path} is neither a folder nor a .txt list of images")
    if not found:
        raise DatasetError(f"{where}: no images found in {', '.join(map(str, entries))}")
    return sorted(set(found))


def convert_yolo_split(images: Sequence[str], class_names: Sequence[str], folder: str, index_file: str,
                       where: str) -> None:
    """One data.yaml split as a ymir training index with ARK annotations (written under `folder`)."""
    from ultralytics.data.utils import img2label_paths

    from executor.protocol.dataset import probe_image, yolo_label_to_ark

    labels = img2label_paths(list(images))
    if not any(os.path.isfile(p) for p in labels):
        raise DatasetError(f"{where}: no YOLO label files for its {len(images)} images (looked for e.g. "
                           f"{labels[0]}: labels/ beside images/, one .txt per image)")
    os.makedirs(folder, exist_ok=True)
    rows = []
    for image, label in zip(images, labels):
        stem = os.path.splitext(os.path.basename(image))[0]
        target = os.path.join(folder, f"{hashlib.sha1(image.encode()).hexdigest()[:10]}_{stem}.txt")
        probed = probe_image(image)
        lines = []
        if os.path.isfile(label) and not isinstance(probed, str):  # no label file: a negative image
            lines = yolo_label_to_ark(label, probed[0], probed[1], class_names)
        atomic_write_text(target, "".join(lines))  # unreadable images are skipped (and counted) when read
        rows.append(f"{os.path.abspath(image)}\t{target}\n")
    atomic_write_text(index_file, "".join(rows))


def prepare_data(spec: str, out: str, config: Mapping) -> Data:
    """The pool and the fixed val split from --data, validated by executor.protocol.dataset (and converted to ymir's
    index + ARK form first when --data is a data.yaml)."""
    from executor.protocol.yaml_file import read_yaml_mapping
    from executor.protocol.dataset import read_dataset
    from executor.protocol.index import read_training_index

    spec = os.path.abspath(spec)
    renamed = list(config.get("class_names") or [])
    if os.path.isdir(spec):
        train_index, val_index = (os.path.join(spec, f) for f in ("train-index.tsv", "val-index.tsv"))
        missing = [p for p in (train_index, val_index) if not os.path.isfile(p)]
        if missing:
            raise DatasetError(f"--data {spec}: a data folder needs train-index.tsv and val-index.tsv "
                               f"(missing {', '.join(missing)}); or pass a data.yaml")
        class_names = renamed or read_names_file(spec)
        if not class_names:
            raise ConfigError(f"--data {spec}: no class names: add {NAMES_FILES[0]} (one name per line) or "
                              "--set class_names=a,b,c")
        root = spec
    elif os.path.isfile(spec) and spec.lower().endswith((".yaml", ".yml")):
        data = read_yaml_mapping(spec, "--data")
        where = f"--data {spec}"
        class_names = yaml_names(data, where)
        if renamed:
            if len(renamed) != len(class_names):
                raise ConfigError(f"--set class_names: {len(renamed)} names, but {spec} has {len(class_names)} "
                                  "classes; class_names may only rename them")
            class_names = [str(n) for n in renamed]
        base = os.path.dirname(spec)
        root = os.path.normpath(os.path.join(base, str(data["path"]))) if data.get("path") else base
        for key in ("train", "val"):
            if not data.get(key):
                raise DatasetError(f"{where}: key '{key}' is missing (the {'pool' if key == 'train' else 'val split'})")
        folder = os.path.join(out, "dataset")
        train_index, val_index = os.path.join(folder, "train-index.tsv"), os.path.join(folder, "val-index.tsv")
        for key, index in (("train", train_index), ("val", val_index)):
            images = split_images(root, data[key], f"{where} key '{key}'")
            convert_yolo_split(images, class_names, os.path.join(folder, "annotations", key), index,
                               f"{where} key '{key}'")
        atomic_write_text(os.path.join(folder, "names.txt"), "".join(f"{n}\n" for n in class_names))
    else:
        raise ConfigError(f"--data {spec}: expected a data.yaml or a folder with train-index.tsv and val-index.tsv")

    export_format = str(config.get("export_format", "ark:raw"))
    train, val = read_dataset(train_index, val_index, class_names, export_format)
    if not train.stats.boxes_per_class:
        raise DatasetError(f"--data {spec}: the pool ({train_index}) has no labelled boxes: nothing to learn")
    if not val.stats.boxes_per_class:
        raise DatasetError(f"--data {spec}: the val split ({val_index}) has no labelled boxes: mAP is undefined")
    val_real = {os.path.realpath(s.image): s.image for s in val.samples}
    both = [s.image for s in train.samples if os.path.realpath(s.image) in val_real]
    if both:
        raise DatasetError(f"--data {spec}: the val split overlaps the pool: {len(both)} images are in both "
                           f"(e.g. {both[0]}); the val split must be kept out of the pool")
    val_digests = {file_sha256(s.image): s.image for s in val.samples}
    left_out, samples = {}, []
    for sample in train.samples:
        twin = val_digests.get(file_sha256(sample.image))
        if twin:
            left_out[sample.image] = f"the same file as val image {twin}"
        else:
            samples.append(sample)
    if left_out:
        log.warning("%d pool images are byte-identical to val images and are left out of the pool (e.g. %s)",
                    len(left_out), next(iter(left_out.items())))
    annotation = {asset: ann for asset, ann, _ in read_training_index(train_index, "train")}
    pool = sorted({s.image for s in samples})  # (an image listed twice is one image)
    fingerprint = hashlib.sha256()
    for sample in sorted(samples, key=lambda s: s.image) + list(val.samples):
        fingerprint.update(json.dumps([os.path.relpath(sample.image, root), sample.classes.tolist(),
                                       [round(v, 2) for v in sample.boxes.ravel().tolist()]]).encode())
    fingerprint.update(json.dumps(class_names).encode())
    return Data(pool, {k: annotation[k] for k in pool}, val_index, list(val.samples), class_names, root,
                {os.path.relpath(k, root): v for k, v in left_out.items()}, fingerprint.hexdigest())


# ---------------------------------------------------------------- one round: train + evaluate, mine

@dataclass
class Trained:
    weights: str
    mAP50: float
    mAP50_95: float
    mAR50: float
    train_s: float
    eval_s: float


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
        from executor.protocol.monitor import span
        from executor.pipeline.job import Job
        from executor.pipeline.training import Evaluator, run_training

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
        metrics = evaluator(weights, span(progress, 0.9, 1.0))
        eval_s = time.monotonic() - started
        # what mining and reproduction need stays (train-index.tsv, best.pt, result.yaml); the YOLO export,
        # Ultralytics' checkpoints and the ONNX attachment go (tens of MB per round)
        shutil.rmtree(os.path.join(folder, "work"), ignore_errors=True)
        shutil.rmtree(os.path.join(models, "attachments"), ignore_errors=True)
        for name in os.listdir(models):
            if os.path.isfile(os.path.join(models, name)) and name.endswith(".onnx"):
                os.unlink(os.path.join(models, name))
        return Trained(weights, float(metrics.mAP), float(metrics.mAP50_95), float(metrics.mAR), train_s, eval_s)


def evaluate_start(weights: str, data: Data, config: Mapping) -> dict | None:
    """The starting weights before any training, on the val split (executor.engine.evaluation.evaluate): the data's
    classes found by name among the model's (case-insensitive); None when one of them is not there."""
    from dataclasses import replace

    import numpy as np

    from executor.protocol.settings import build_settings
    from executor.engine.evaluation import VAL_IOU, VAL_MAX_DET, evaluate
    from executor.engine.loading import load_detector

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


def count_ranking(infer_json: str, keys: Sequence[str], names: Sequence[str], seed: int) -> list[tuple[str, float]]:
    """The `detections` baseline from infer-result.json: the box count, ties broken by the seed's random
    score of each key's name (its path relative to the pool root; in [0, 0.5), so the count always decides
    first)."""
    from mining.random_score import random_scores

    with open(infer_json, encoding="utf-8") as handle:
        found = json.load(handle)["detection"]
    ties = random_scores(names, seed)
    return [(key, len(found.get(key, {}).get("boxes", [])) + 0.5 * float(tie)) for key, tie in zip(keys, ties)]


def mine(algorithm: str, weights: str, candidates: Sequence[str], folder: str, data: Data, config: Mapping,
         seed: int, progress: Progress, labelled: Sequence[str] = ()) -> list[str]:
    """`candidates` ranked best first by `algorithm` ('name' or 'name:selection') with the model `weights`
    (Quarry's mining task, told which images are labelled already; for the `detections` baseline, its infer
    task); the ranking is kept in folder/mining.tsv. The mining report is off unless --set report=true."""
    from executor.pipeline.job import Job
    from executor.pipeline.tasks import run
    from executor.protocol.writers import write_mining_result

    ranking = os.path.join(folder, "mining.tsv")
    if os.path.isfile(ranking):  # mined before a kill (written atomically): the same model, the same candidates
        return read_ranking(ranking)
    os.makedirs(folder, exist_ok=True)
    base = {"report": False, **config, "model_params_path": [weights], "class_names": data.class_names,
            "seed": seed}
    name, selection = split_algorithm(algorithm)
    shards = os.path.join(folder, "shards")
    names = [data.rel(path) for path in candidates]  # random and CALD draw by them: the same wherever the pool is
    if algorithm == "detections":
        infer_json = os.path.join(folder, "infer-result.json")
        run(["infer"], Job(candidates=list(candidates), infer_result=infer_json, names=list(candidates),
                           models_dir="", shards_dir=shards, work_dir=folder), base, progress)
        write_mining_result(ranking, count_ranking(infer_json, candidates, names, seed))
        os.unlink(infer_json)
    else:
        mining = {**base, "mining_algorithm": name, **({"selection": selection} if selection else {})}
        run(["mining"], Job(candidates=list(candidates), names=names, mining_result=ranking, models_dir="",
                            shards_dir=shards, work_dir=folder, labeled=list(labelled)), mining, progress)
    shutil.rmtree(shards, ignore_errors=True)
    return read_ranking(ranking)


def initial_draw(data: Data, seed: int, count: int) -> list[str]:
    """N0 pool images at random: depends only on (seed, relative path), never on order or location."""
    from mining.base import image_seed

    return sorted(sorted(data.pool, key=lambda p: image_seed(seed, "initial\x00" + data.rel(p)))[:count])


# ---------------------------------------------------------------- the loop

class Bars:
    """tqdm: one bar of rounds, one below it for the training or mining inside."""

    def __init__(self, total: int, done: int, enabled: bool):
        from tqdm import tqdm

        self.tqdm, self.enabled = tqdm, enabled
        self.outer = tqdm(total=total, initial=done, unit="round", desc="simulation", position=0,
                          dynamic_ncols=True, disable=not enabled, file=sys.stderr)

    def step(self, desc: str):
        self.outer.set_description(desc)
        bar = self.tqdm(total=100, desc="  " + desc.split(": ")[-1], position=1, leave=False, unit="%",
                        dynamic_ncols=True, disable=not self.enabled, file=sys.stderr,
                        bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining}")

        def progress(fraction: float) -> None:
            bar.update(max(0.0, min(100.0, 100.0 * fraction) - bar.n))

        return bar, progress

    def close(self) -> None:
        self.outer.close()


class Simulation:
    """Runs a Plan; `trainer` and `miner` can be replaced (tests), `after_round(record)` is called after each
    round is written (a test raises there to simulate a kill)."""

    def __init__(self, plan: Plan, trainer=None, miner=None, after_round: Callable[[dict], None] | None = None,
                 progress: bool = True, clock: Callable[[], float] = time.monotonic, reference: bool = True):
        plan.check()
        self.plan = plan
        self.out = os.path.abspath(plan.out)
        self.state_file = os.path.join(self.out, "simulation.json")
        self.after_round, self.show_progress, self.clock = after_round, progress, clock
        self.check_config()
        self.check_out()
        self.data = prepare_data(plan.data, self.out, plan.config)
        if plan.labelled_max > len(self.data.pool):
            raise ConfigError(f"--initial {plan.initial} + --rounds {plan.rounds} x --budget {plan.budget} = "
                              f"{plan.labelled_max} images, more than the pool of {len(self.data.pool)} usable "
                              f"images in {plan.data}")
        self.config = {k: v for k, v in plan.config.items() if k != "class_names"}
        self.trainer = trainer or QuarryTrainer(self.data, self.config, os.path.abspath(plan.weights),
                                                self.train_val_index())
        self.miner = miner or mine
        self.identity = {"data": os.path.abspath(plan.data), "dataset": self.data.fingerprint,
                         "weights_sha256": file_sha256(plan.weights), "initial": plan.initial,
                         "budget": plan.budget, "config": dict(sorted(self.config.items())),
                         "train_val": plan.train_val if 0 < plan.train_val < len(self.data.val_samples) else 0,
                         "class_names": self.data.class_names}
        self.records: dict[tuple[str, int, int], dict] = {}  # (algorithm or SHARED_ROUND, seed, round) → record
        self.start: dict | None = None   # the start weights evaluated without training (None: not comparable)
        self.want_start = reference
        self.load()

    def check_out(self) -> None:
        """--out: new, empty, or a simulation's folder (never someone's folder with other files in it)."""
        ours = {"dataset", "runs", "simulation.json", "simulation.csv", "simulation.md", "simulation.png"}
        if os.path.isdir(self.out) and not os.path.isfile(self.state_file):
            other = sorted(set(os.listdir(self.out)) - ours)
            if other:
                raise ConfigError(f"--out {self.out}: the folder holds other files ({', '.join(other[:3])}) and no "
                                  "simulation.json; use a new or empty folder")
            shutil.rmtree(os.path.join(self.out, "runs"), ignore_errors=True)  # a first round a kill interrupted
        elif os.path.exists(self.out) and not os.path.isdir(self.out):
            raise ConfigError(f"--out {self.out}: not a folder")
        os.makedirs(self.out, exist_ok=True)

    def train_val_index(self) -> str:
        """The val index the training sees: the first --train-val usable val images (sorted), or all of them."""
        from executor.protocol.index import read_training_index

        count = self.plan.train_val
        if not count or count >= len(self.data.val_samples):
            return self.data.val_index
        usable = sorted(s.image for s in self.data.val_samples)[:count]
        rows = {asset: ann for asset, ann, _ in read_training_index(self.data.val_index, "val")}
        path = os.path.join(self.out, "dataset", f"train-val-{count}-index.tsv")
        atomic_write_text(path, "".join(f"{p}\t{rows[p]}\n" for p in usable))
        return path

    def check_config(self) -> None:
        """Every setting checked before anything runs (build_settings and Ultralytics' argument checker)."""
        from executor.engine import trainer
        from executor.protocol.settings import build_settings
        from executor.pipeline.training import parse_args_options
        from mining import SCORERS

        config = {k: v for k, v in self.plan.config.items() if k != "class_names"}
        settings = build_settings("training", config)
        trainer.check_train_args(parse_args_options(settings.args_options))
        trainer.train_device(settings.gpu_id)
        for spec in self.plan.algorithms:
            name, selection = split_algorithm(spec)
            if name in SCORERS:
                build_settings("mining", {**config, "mining_algorithm": name,
                                          **({"selection": selection} if selection else {})})
            else:
                build_settings("infer", config)

    # ------------------------------------------------------------ state

    def load(self) -> None:
        if not os.path.isfile(self.state_file):
            return
        try:
            with open(self.state_file, encoding="utf-8") as handle:
                state = json.load(handle)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--out {self.out}: {self.state_file} cannot be read ({exc}); delete it to start "
                              "over") from None
        if state.get("identity") != self.identity:
            old = state.get("identity") or {}
            differ = sorted(k for k in set(old) | set(self.identity) if old.get(k) != self.identity.get(k))
            raise ConfigError(f"--out {self.out} holds a simulation of another plan ({', '.join(differ)} differ); "
                              f"use another --out, or delete {self.state_file} to start over")
        self.start = state.get("start_weights")
        for run in state.get("runs", []):
            for record in run["rounds"]:
                key = (SHARED_ROUND if record["round"] == 0 else run["algorithm"], run["seed"], record["round"])
                self.records[key] = {k: v for k, v in record.items() if k != "shared"}
        if self.records:
            log.info("%s: %d finished rounds kept from an earlier run", self.state_file, len(self.records))

    def record(self, algorithm: str, seed: int, round_: int) -> dict | None:
        return self.records.get((SHARED_ROUND if round_ == 0 else algorithm, seed, round_))

    def runs(self, algorithms: Sequence[str] | None = None, seeds: Sequence[int] | None = None) -> list[dict]:
        """Per algorithm and seed, its finished rounds in order (round 0 is the shared one)."""
        algorithms = algorithms or sorted({a for a, _, r in self.records if a != SHARED_ROUND} |
                                          set(self.plan.algorithms), key=self.order)
        seeds = seeds or sorted({s for _, s, _ in self.records} | set(self.plan.seeds))
        runs = []
        for algorithm in algorithms:
            for seed in seeds:
                rounds = []
                for number in range(0, 1 + max([r for _, _, r in self.records] + [self.plan.rounds])):
                    record = self.record(algorithm, seed, number)
                    if record is None:
                        break
                    rounds.append({**record, "shared": True} if number == 0 else record)
                if rounds:
                    runs.append({"algorithm": algorithm, "seed": seed, "rounds": rounds})
        return runs

    def order(self, algorithm: str):
        names = list(self.plan.algorithms)
        return (names.index(algorithm) if algorithm in names else len(names), algorithm)

    def where(self, path: str) -> str:
        """A path as simulation.json records it: relative to --out when inside it (so the file does not depend
        on where --out is)."""
        rel = os.path.relpath(path, self.out)
        return path if rel.startswith("..") else rel

    def save(self) -> None:
        plan = self.plan
        state = {"version": FORMAT_VERSION, "identity": self.identity,
                 "plan": {"data": os.path.abspath(plan.data), "weights": os.path.abspath(plan.weights),
                          "algorithms": list(plan.algorithms), "initial": plan.initial, "budget": plan.budget,
                          "rounds": plan.rounds, "seeds": list(plan.seeds), "config": dict(self.config),
                          "train_val": plan.train_val},
                 "pool": {"root": self.data.root, "size": len(self.data.pool), "left_out": self.data.left_out},
                 "val": {"index": self.where(self.data.val_index), "size": len(self.data.val_samples)},
                 "class_names": self.data.class_names,
                 "start_weights": self.start,
                 "runs": self.runs()}
        atomic_write_text(self.state_file, json.dumps(state, indent=1) + "\n")
        atomic_write_text(os.path.join(self.out, "simulation.csv"), csv_text(self.runs()))

    # ------------------------------------------------------------ running

    def folder(self, algorithm: str, seed: int, round_: int) -> str:
        owner = SHARED_ROUND if round_ == 0 else algorithm.replace(":", "-")
        return os.path.join(self.out, "runs", f"seed_{seed}", owner, f"round_{round_}")

    def steps(self) -> list[tuple[str, int, int]]:
        steps = []
        for seed in self.plan.seeds:
            steps.append((SHARED_ROUND, seed, 0))
            steps += [(a, seed, r) for r in range(1, self.plan.rounds + 1) for a in self.plan.algorithms]
        return steps

    def run(self) -> dict:
        """Every round of the plan not finished yet; returns the summary (see `summarize`)."""
        steps = self.steps()
        todo = [s for s in steps if self.record(*s) is None]
        bars = Bars(len(steps), len(steps) - len(todo), self.show_progress)
        try:
            if self.want_start and self.start is None:
                self.start = evaluate_start(os.path.abspath(self.plan.weights), self.data, self.config) or {}
                if self.start:
                    log.info("start weights without training: mAP50 %.4f, mAP50-95 %.4f on the val split",
                             self.start["mAP50"], self.start["mAP50_95"])
            for algorithm, seed, round_ in todo:
                self.run_round(algorithm, seed, round_, bars)
        finally:
            bars.close()
            if self.records or self.start:
                self.save()
                self.report()
        return summarize(self.runs(list(self.plan.algorithms), list(self.plan.seeds)), self.plan.rounds)

    def run_round(self, algorithm: str, seed: int, round_: int, bars: Bars) -> None:
        folder = self.folder(algorithm, seed, round_)
        for name in os.listdir(folder) if os.path.isdir(folder) else ():  # a round a kill interrupted
            if name not in ("mining.tsv", "shards"):  # (the same model mined them: kept, as mining resumes)
                path = os.path.join(folder, name)
                shutil.rmtree(path) if os.path.isdir(path) else os.unlink(path)
        os.makedirs(folder, exist_ok=True)
        label = f"seed {seed} {'round 0 (all algorithms)' if round_ == 0 else f'{algorithm} round {round_}'}"
        if round_ == 0:
            labelled, added, mine_s = [], initial_draw(self.data, seed, self.plan.initial), 0.0
        else:
            previous = self.record(algorithm, seed, round_ - 1)
            labelled = [self.data.abs(p) for r in range(round_) for p in self.record(algorithm, seed, r)["added"]]
            taken = set(labelled)
            candidates = [p for p in self.data.pool if p not in taken]
            if len(candidates) != len(self.data.pool) - len(taken) or len(taken) != len(labelled):
                raise RuntimeError(f"{algorithm} seed {seed}: the labelled images of rounds 0..{round_ - 1} are not "
                                   "distinct images of the pool")
            bar, progress = bars.step(f"{label}: mining {len(candidates)} images ({algorithm})")
            started = self.clock()
            try:
                ranking = self.miner(algorithm, os.path.join(self.out, previous["weights"]), candidates, folder,
                                     self.data, self.config, seed, progress, labelled=labelled)
            finally:
                bar.close()
            mine_s = self.clock() - started
            if sorted(ranking) != sorted(candidates):
                raise RuntimeError(f"{algorithm}: the ranking in {folder} does not list the remaining pool exactly")
            added = ranking[:self.plan.budget]
        images = sorted(labelled + added)
        bar, progress = bars.step(f"{label}: training on {len(images)} images")
        try:
            trained = self.trainer(folder, images, seed, progress)
        finally:
            bar.close()
        record = {"round": round_, "labelled": len(images), "added": [self.data.rel(p) for p in added],
                  "mAP50": round(trained.mAP50, 6), "mAP50_95": round(trained.mAP50_95, 6),
                  "mAR50": round(trained.mAR50, 6), "train_s": round(trained.train_s, 2),
                  "eval_s": round(trained.eval_s, 2), "mine_s": round(mine_s, 2),
                  "weights": os.path.relpath(trained.weights, self.out)}
        self.records[(SHARED_ROUND if round_ == 0 else algorithm, seed, round_)] = record
        self.save()
        bars.outer.update(1)
        log.info("%s: %d labelled, mAP50 %.4f, mAP50-95 %.4f (training %.0f s, mining %.0f s)", label,
                 len(images), trained.mAP50, trained.mAP50_95, trained.train_s, mine_s)
        if self.after_round:
            self.after_round({"algorithm": algorithm, "seed": seed, **record})

    def report(self) -> dict:
        """simulation.md and simulation.png from the finished rounds; returns the summary."""
        runs = self.runs(list(self.plan.algorithms), list(self.plan.seeds))
        summary = summarize(runs, self.plan.rounds)
        atomic_write_text(os.path.join(self.out, "simulation.md"), markdown(self, summary))
        try:
            if summary["algorithms"]:  # (no run has every round yet: no curve to draw)
                plot(summary, os.path.join(self.out, "simulation.png"), self.title(), self.start)
        except Exception:  # the numbers are written; a missing plot must not lose them
            log.exception("simulation.png could not be drawn")
        return summary

    def title(self) -> str:
        p = self.plan
        data = os.path.abspath(p.data)
        name = os.path.basename(os.path.dirname(data) if os.path.isfile(data) else data)
        settings = self.trainer.settings(0) if isinstance(self.trainer, QuarryTrainer) else self.config
        seeds = f"{len(p.seeds)} seed{'s' * (len(p.seeds) > 1)}"
        return (f"{name}: N0 {p.initial}, B {p.budget}, {p.rounds} rounds, {seeds}, "
                f"{settings.get('epochs', '?')} epoch{'s' * (settings.get('epochs') != 1)}, "
                f"img {settings.get('img_size', '?')}")


# ---------------------------------------------------------------- results

CSV_FIELDS = ("algorithm", "seed", "round", "labelled", "mAP50", "mAP50_95", "mAR50", "train_s", "eval_s", "mine_s",
              "added_count", "added")


def csv_text(runs: Sequence[dict]) -> str:
    """One row per algorithm, seed and round; `added` = the images revealed in that round (';'-separated,
    relative to the pool root of simulation.json; round 0: the random N0 shared by every algorithm)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    for run in runs:
        for r in run["rounds"]:
            writer.writerow([run["algorithm"], run["seed"], r["round"], r["labelled"], r["mAP50"], r["mAP50_95"],
                             r["mAR50"], r["train_s"], r["eval_s"], r["mine_s"], len(r["added"]), ";".join(r["added"])])
    return buffer.getvalue()


def area(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Area under the curve (trapezoids) divided by its width: the mean mAP over the labelled range."""
    if len(xs) < 2 or xs[-1] == xs[0]:
        return float(ys[-1])
    total = sum((xs[i + 1] - xs[i]) * (ys[i + 1] + ys[i]) / 2 for i in range(len(xs) - 1))
    return total / (xs[-1] - xs[0])


def spread(values: Sequence[float]) -> dict:
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "min": min(values), "max": max(values), "sd": sd, "n": n}


def summarize(runs: Sequence[dict], rounds: int) -> dict:
    """Per algorithm: curves (labelled → mAP per seed) of the runs with every round finished, the last-round
    mAP, the area under the mAP50 curve, and both as paired differences to random (same seed, same N0)."""
    complete = {}
    for run in runs:
        if len(run["rounds"]) >= rounds + 1:  # (an earlier run may have gone further)
            complete.setdefault(run["algorithm"], {})[run["seed"]] = run["rounds"][:rounds + 1]
    summary = {"algorithms": {}, "rounds": rounds}
    for algorithm, by_seed in complete.items():
        per_seed = {}
        for seed, rs in by_seed.items():
            xs = [r["labelled"] for r in rs]
            per_seed[seed] = {"labelled": xs, "mAP50": [r["mAP50"] for r in rs],
                              "mAP50_95": [r["mAP50_95"] for r in rs],
                              "last50": rs[-1]["mAP50"], "last50_95": rs[-1]["mAP50_95"],
                              "auc50": area(xs, [r["mAP50"] for r in rs]),
                              "auc50_95": area(xs, [r["mAP50_95"] for r in rs]),
                              "mine_s": sum(r["mine_s"] for r in rs[1:]) / max(1, len(rs) - 1),
                              "train_s": sum(r["train_s"] for r in rs) / len(rs)}
        summary["algorithms"][algorithm] = {"seeds": per_seed, **{
            key: spread([v[key] for v in per_seed.values()])
            for key in ("last50", "last50_95", "auc50", "auc50_95", "mine_s", "train_s")}}
    random_runs = summary["algorithms"].get("random")
    for algorithm, entry in summary["algorithms"].items():
        if random_runs is None or algorithm == "random":
            continue
        paired = [s for s in entry["seeds"] if s in random_runs["seeds"]]
        if paired:
            for key in ("last50", "last50_95", "auc50", "auc50_95"):
                diffs = [entry["seeds"][s][key] - random_runs["seeds"][s][key] for s in paired]
                entry[f"vs_random_{key}"] = {**spread(diffs), "wins": sum(d > 0 for d in diffs)}
    return summary


def _value(s: dict) -> str:
    return f"{s['mean']:.3f}" + (f" [{s['min']:.3f}, {s['max']:.3f}]" if s["n"] > 1 else "")


def _delta(s: dict | None) -> str:
    if s is None:
        return "—"
    text = f"{s['mean']:+.3f}"
    if s["n"] > 1:
        text += f" [{s['min']:+.3f}, {s['max']:+.3f}] ({s['wins']}/{s['n']} seeds > 0)"
    return text


def table(summary: dict) -> str:
    """The markdown table of the terminal and of simulation.md."""
    head = ("| algorithm | seeds | mAP50 last | mAP50-95 last | AUC mAP50 | Δ mAP50 last vs random | "
            "Δ AUC mAP50 vs random | Δ mAP50-95 last vs random | mining s/round |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for algorithm, e in summary["algorithms"].items():
        lines.append(f"| {algorithm} | {e['last50']['n']} | {_value(e['last50'])} | {_value(e['last50_95'])} | "
                     f"{_value(e['auc50'])} | {_delta(e.get('vs_random_last50'))} | {_delta(e.get('vs_random_auc50'))} "
                     f"| {_delta(e.get('vs_random_last50_95'))} | {e['mine_s']['mean']:.0f} |")
    return "\n".join(lines) + "\n"


def curve_table(summary: dict) -> str:
    """Mean mAP50 (mAP50-95) over seeds at every labelled count."""
    algos = summary["algorithms"]
    if not algos:
        return ""
    counts = next(iter(next(iter(algos.values()))["seeds"].values()))["labelled"]
    lines = ["| labelled | " + " | ".join(algos) + " |", "|---|" + "---|" * len(algos)]
    for i, count in enumerate(counts):
        cells = []
        for e in algos.values():
            m50 = [s["mAP50"][i] for s in e["seeds"].values()]
            m95 = [s["mAP50_95"][i] for s in e["seeds"].values()]
            cells.append(f"{sum(m50) / len(m50):.3f} ({sum(m95) / len(m95):.3f})")
        lines.append(f"| {count} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def markdown(sim: Simulation, summary: dict) -> str:
    p, d = sim.plan, sim.data
    config = ", ".join(f"{k} {v}" for k, v in sorted(sim.config.items())) or "the template defaults"
    finished = sum(1 for _ in sim.records)
    total = len(sim.steps())
    parts = [
        "# Active-learning simulation\n",
        f"{sim.title()}.\n",
        f"- data: `{os.path.abspath(p.data)}`: pool {len(d.pool)} images"
        + (f" ({len(d.left_out)} left out: byte-identical to val images)" if d.left_out else "")
        + f", fixed val split {len(d.val_samples)} images; classes {', '.join(d.class_names)}",
        f"- start weights: `{p.weights}` (every round trains from them); training and mining settings: {config}; "
        + (f"the training validates on the first {sim.identity['train_val']} val images"
           if sim.identity["train_val"] else "the training validates on the whole val split"),
        f"- plan: N0 {p.initial} at random per seed (shared by the algorithms), then {p.rounds} rounds of mine → "
        f"reveal the top {p.budget} → retrain → evaluate; seeds {', '.join(map(str, p.seeds))}",
        f"- rounds finished: {min(finished, total)} of {total}" + ("" if finished >= total else " (the table has "
                                                                   "only the runs with every round finished)"),
        "",
        table(summary),
        "mAP50 and mAP50-95 are Quarry's evaluation of each round's best.pt on the val split; values are the mean "
        "over seeds with [min, max]. AUC = area under the mAP50 curve over the labelled range divided by its width "
        "(the mean mAP50 from N0 to the last round). Δ = paired difference to random (same seed, same N0), mean "
        "[min, max] over seeds, and in how many seeds it is above 0. With few seeds and small pools the spread "
        "is as large as the effects: read the wins and the band, not the mean alone (docs/simulation.md).\n",
        (f"The start weights without any training (their classes {', '.join(sim.start['classes'])} matched by name) "
         f"score mAP50 {sim.start['mAP50']:.3f}, mAP50-95 {sim.start['mAP50_95']:.3f} on the same val split (the "
         "dashed line in the plot).\n" if sim.start else ""),
        "Mean mAP50 (mAP50-95) per labelled count:\n",
        curve_table(summary),
        "![mAP against labelled images](simulation.png)\n",
    ]
    return "\n".join(parts)


def plot(summary: dict, path: str, title: str, start: dict | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, name in ((axes[0], "mAP50", "mAP50"), (axes[1], "mAP50_95", "mAP50-95")):
        for algorithm, e in summary["algorithms"].items():
            seeds = list(e["seeds"].values())
            xs = seeds[0]["labelled"]
            columns = list(zip(*[s[key] for s in seeds]))
            mean = [sum(c) / len(c) for c in columns]
            line, = ax.plot(xs, mean, marker="o", label=f"{algorithm} ({len(seeds)} seed{'s' * (len(seeds) > 1)})")
            if len(seeds) > 1:
                ax.fill_between(xs, [min(c) for c in columns], [max(c) for c in columns], color=line.get_color(),
                                alpha=0.15, linewidth=0)
        if start:
            ax.axhline(start[key], color="grey", linestyle="--", linewidth=1, label="start weights, no training")
        ax.set_xlabel("labelled images")
        ax.set_ylabel(f"{name} on the val split")
        ax.grid(alpha=0.3)
    axes[0].legend(loc="best", fontsize=8)
    fig.suptitle(title + " — line: mean over seeds, band: min–max", fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as handle:
        handle.write(buffer.getvalue())
    os.replace(tmp, path)


# ---------------------------------------------------------------- command line

def add_parser(subparsers, common: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """`simulate` and its flags on an argparse subparsers object (start.py calls this); `common`: a parent parser
    of flags every subcommand takes."""
    cmd = subparsers.add_parser(
        "simulate", parents=[common] if common else [],
        help="active-learning loop on a labelled pool: does mining beat random on your data?",
        description="Per algorithm and seed: N0 random images, then ROUNDS x (mine the rest of the pool with the "
                    "last model, reveal the top BUDGET, retrain from --weights, evaluate on the val split). "
                    "Writes simulation.{json,csv,md,png} to --out; a rerun continues a killed one.")
    cmd.add_argument("--data", required=True, help="an Ultralytics data.yaml (train = the pool, val = the fixed val "
                                                   "split, YOLO labels) or a folder with train-index.tsv and "
                                                   "val-index.tsv (ymir index files) and names.txt")
    cmd.add_argument("--weights", "--model", dest="weights", required=True,
                     help="starting weights (.pt) of every training round")
    cmd.add_argument("--algorithms", default="random,entropy",
                     help=f"comma-separated, of {', '.join(algorithm_names())}; a mining algorithm may name a "
                          "selection mode, e.g. entropy:diverse (default %(default)s)")
    cmd.add_argument("--initial", type=int, required=True, help="N0: images labelled at random before round 1")
    cmd.add_argument("--budget", type=int, required=True, help="B: images revealed per round")
    cmd.add_argument("--rounds", type=int, default=3, help="mining rounds after round 0 (default %(default)s)")
    cmd.add_argument("--seeds", default="3", help="a count (3 = seeds 0,1,2) or a list such as 0,7 (default 3)")
    cmd.add_argument("--epochs", type=int, help="training epochs per round (template default 100)")
    cmd.add_argument("--img-size", "--imgsz", dest="img_size", type=int,
                     help="training, evaluation and mining size (template default 640)")
    cmd.add_argument("--batch", type=int, help="training batch, also the mining batch (template default 16)")
    cmd.add_argument("--set", action="append", metavar="KEY=VALUE",
                     help="any training/mining template key, e.g. --set lr0=0.005 --set gpu_id=0 "
                          "--set class_names=bus,car,motorcycle,person,truck (renames the data's classes)")
    cmd.add_argument("--train-val", type=int, default=0, metavar="N",
                     help="val images the training itself validates on (Ultralytics' per-epoch val and best-epoch "
                          "choice, result.yaml): the first N, default all; the reported mAP always uses the whole "
                          "val split. With --set args_options=val=False (best = last epoch) a small N saves two "
                          "val passes per round")
    cmd.add_argument("--out", required=True, help="output folder (a rerun with the same plan continues)")
    cmd.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    return cmd


def plan_from_args(args) -> Plan:
    config = parse_sets(getattr(args, "set", None) or [])
    for key, value in (("epochs", args.epochs), ("img_size", args.img_size), ("batch_size_per_gpu", args.batch)):
        if value is not None:
            config[key] = value
    algorithms = tuple(dict.fromkeys(a.strip() for a in str(args.algorithms).split(",") if a.strip()))
    return Plan(data=args.data, weights=args.weights, out=args.out, algorithms=algorithms, initial=args.initial,
                budget=args.budget, rounds=args.rounds, seeds=parse_seeds(args.seeds), config=config,
                train_val=getattr(args, "train_val", 0) or 0)


def run_cli(args) -> int:
    """start.py simulate: run the plan, print the table. Exit status 0, 2 for a bad flag or --set value (the
    message names it), 1 for any other failure (bad data, weights, training), 130 when interrupted."""
    try:
        from tqdm.contrib.logging import logging_redirect_tqdm

        plan = plan_from_args(args)
        with logging_redirect_tqdm():
            simulation = Simulation(plan, progress=not getattr(args, "no_progress", False))
            summary = simulation.run()
        print(table(summary), end="")
        print(f"\nwrote {os.path.join(simulation.out, 'simulation.md')} (and .json, .csv, .png)")
        return 0
    except KeyboardInterrupt:
        log.error("interrupted; the finished rounds are kept: rerun the same command to continue")
        return 130
    except ConfigError as exc:  # a flag or --set value (checked before anything runs): a usage error
        log.error("%s", one_line(exc))
        return 2
    except Exception as exc:
        log.error("%s", one_line(exc))
        if not isinstance(exc, QuarryError):
            log.debug("traceback", exc_info=True)
        return 1
