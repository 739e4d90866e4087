"""What a simulation runs: the plan (algorithms, seeds, rounds, budget, the config keys it owns) read from the
command line, and the data: a YOLO dataset's pool and fixed val split, validated and converted to ymir's index.
"""

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from executor.errors import ConfigError, DatasetError, ModelError
from executor.pipeline.shards import file_sha256
from executor.protocol.labelled import (NAMES_FILES, convert_yolo_split, read_names_file, split_images,
                                        yaml_names, yaml_root)
from executor.protocol.writers import atomic_write_text

log = logging.getLogger(__name__)


BASELINES = ("detections",)   # offered besides mining.SCORERS, not registered there
# keys the simulation sets itself (the flag or source to use instead)
OWNED_KEYS = {"pretrained_model_params": "--weights", "model_params_path": "--weights", "seed": "--seeds",
              "mining_algorithm": "--algorithms"}
# config key → the simulate flag that sets it (for --set typo hints); the platform keys --set may give
SET_FLAGS = {**OWNED_KEYS, "epochs": "--epochs", "img_size": "--img-size", "batch_size_per_gpu": "--batch"}
SET_PLATFORM_KEYS = {"gpu_id", "class_names", "evaluate_config"}


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
    budget: int | None = None        # B images per round, or
    budget_cost: float | None = None # C labelling cost per round (executor/simulate/cost.py); exactly one
    image_cost: float = 1.0          # c: the cost of an image besides its boxes (cost = boxes + c x images)
    rounds: int = 3                  # R mining rounds after round 0
    seeds: tuple[int, ...] = (0,)
    config: Mapping = field(default_factory=dict)  # template keys (training and mining), flags and --set
    train_val: int = 0               # val images the training itself validates on (0 = all); mAP uses all
    bootstrap: int = 500             # draws of the paired bootstrap over val images (0: none); not the plan's identity

    def check(self) -> None:
        if not self.algorithms:
            raise ConfigError("--algorithms: no algorithm given")
        for spec in self.algorithms:
            parse_arm(spec)
        if (self.budget is None) == (self.budget_cost is None):
            raise ConfigError("give exactly one of --budget (images per round) and --budget-cost (labelling cost "
                              "per round)")
        for flag, value, low in (("--initial", self.initial, 1), ("--budget", self.budget, 1),
                                 ("--rounds", self.rounds, 1), ("--train-val", self.train_val, 0),
                                 ("--bootstrap", self.bootstrap, 0)):
            if value is not None and (not isinstance(value, int) or value < low):
                raise ConfigError(f"{flag}: {value!r} is not allowed; expected an integer >= {low}")
        for flag, value in (("--budget-cost", self.budget_cost), ("--image-cost", self.image_cost)):
            if value is not None and not (isinstance(value, (int, float)) and value > 0):
                raise ConfigError(f"{flag}: {value!r} is not allowed; expected a number > 0 (an image is never free)")
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

    def arms(self) -> list["Arm"]:
        return [parse_arm(spec) for spec in self.algorithms]

    @property
    def budget_text(self) -> str:
        return f"B {self.budget} images" if self.budget is not None else f"cost {self.budget_cost:g}"


# ---------------------------------------------------------------- arms: an algorithm with its own mining keys

@dataclass(frozen=True)
class Arm:
    """One curve of the comparison: `name` (a mining algorithm or a baseline) with its own template keys."""
    spec: str                        # as given: its label in every output
    name: str
    params: Mapping = field(default_factory=dict)  # mining (infer for a baseline) template keys, selection included

    @property
    def folder(self) -> str:
        """Its runs/ folder name: 'entropy:diverse' → 'entropy-diverse', 'entropy[entropy_aggregation=max]' →
        'entropy-entropy_aggregation=max'."""
        return re.sub(r"[^\w.=-]+", "-", self.spec).strip("-")


ARM_SYNTAX = re.compile(r"^([A-Za-z_][\w]*)(?:\[([^\[\]]*)\])?(?::([^\[\]:,]*))?$")


def parse_arm(spec: str) -> Arm:
    """'entropy' | 'entropy:diverse' | 'entropy[entropy_aggregation=max,conf_thres=0.1]' (both may be combined,
    'name[KEY=VALUE,...]:selection'): the KEYs are the mining template's (the infer template's for the detections
    baseline), read like --set; every error names the arm."""
    from executor.cli.flags import set_values
    from executor.protocol.templates import template_keys

    match = ARM_SYNTAX.match(spec.strip())
    if not match:
        raise ConfigError(f"--algorithms {spec!r}: expected NAME, NAME:SELECTION or NAME[KEY=VALUE,...], e.g. "
                          "entropy[entropy_aggregation=max]")
    name, inside, selection = match.group(1), match.group(2), match.group(3)
    known = algorithm_names()
    if name not in known:
        raise ConfigError(f"--algorithms: unknown algorithm {name!r}; expected some of {', '.join(known)} "
                          "(a mining algorithm may name a selection mode, entropy:diverse, and template keys, "
                          "entropy[entropy_aggregation=max])")
    items = [item.strip() for item in (inside or "").split(",") if item.strip()]
    if selection is not None:
        items.append(f"selection={selection.strip()}")
    template = "infer" if name in BASELINES else "mining"
    allowed = set(template_keys()[template]) - set(OWNED_KEYS)
    for key in (item.partition("=")[0].strip() for item in items):
        if key in OWNED_KEYS or any(key in keys for keys in template_keys().values()) and key not in allowed:
            raise ConfigError(f"--algorithms {spec!r}: {key!r} is not a key this arm may set (its keys: the "
                              f"{template} template's, except {', '.join(OWNED_KEYS)})"
                              + (f"; the {name} baseline has no selection modes" if key == "selection" else ""))
    try:
        params = set_values(items, [template], flags=SET_FLAGS, extra_keys=set(), error=ConfigError)
    except ConfigError as exc:  # (its message names the item as a --set one)
        raise ConfigError(f"--algorithms {spec!r}: {str(exc).removeprefix('--set ')}") from None
    if "selection" in params:
        from executor.protocol.rules import RULES

        try:
            RULES["selection"]("selection", params["selection"])
        except ConfigError as exc:
            raise ConfigError(f"--algorithms {spec!r}: {exc}") from None
    return Arm(spec.strip(), name, params)


def split_arms(text: str) -> tuple[str, ...]:
    """--algorithms as arm specs: split at the commas outside brackets, duplicates dropped."""
    arms, depth, current = [], 0, ""
    for char in str(text):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            arms.append(current)
            current = ""
        else:
            current += char
    arms.append(current)
    return tuple(dict.fromkeys(a.strip() for a in arms if a.strip()))


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
    """--set KEY=VALUE for any training, mining or infer template key (and gpu_id, class_names, evaluate_config),
    through the command line's parser (executor/cli/flags.set_values), its errors a ConfigError; class_names may be
    written a,b,c. The keys the simulation sets itself are refused by Plan.check."""
    from executor.cli.flags import set_values

    values = set_values(items, ["training", "mining", "infer"], flags=SET_FLAGS, extra_keys=SET_PLATFORM_KEYS,
                        error=ConfigError)
    if isinstance(values.get("class_names"), str):
        values["class_names"] = [n.strip() for n in values["class_names"].split(",") if n.strip()]
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
    pool_samples: dict = field(default_factory=dict)  # pool image → its executor.shared.Sample (the labels to reveal)
    fit_samples: list = field(default_factory=list)   # the fit split (data.yaml 'test', a folder's fit-index.tsv):
    #                                                   where error models are fitted, never the reported val split
    fit_source: str = ""

    def rel(self, path: str) -> str:
        return os.path.relpath(path, self.root)

    def abs(self, rel: str) -> str:
        """The pool path recorded as `rel` (exactly as the index lists it)."""
        if not hasattr(self, "_by_rel"):
            self._by_rel = {self.rel(p): p for p in self.pool}
        return self._by_rel[rel]


def prepare_data(spec: str, out: str, config: Mapping) -> Data:
    """The pool and the fixed val split from --data, validated by executor.protocol.dataset (and converted to ymir's
    index + ARK form first when --data is a data.yaml)."""
    from executor.protocol.dataset import read_dataset, read_split
    from executor.protocol.index import read_training_index
    from executor.protocol.yaml_file import read_yaml_mapping

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
        fit_index = os.path.join(spec, "fit-index.tsv")
        fit_source = f"{fit_index}"
    elif os.path.isfile(spec) and spec.lower().endswith((".yaml", ".yml")):
        data = read_yaml_mapping(spec, "--data")
        where = f"--data {spec}"
        class_names = yaml_names(data, where)
        if renamed:
            if len(renamed) != len(class_names):
                raise ConfigError(f"--set class_names: {len(renamed)} names, but {spec} has {len(class_names)} "
                                  "classes; class_names may only rename them")
            class_names = [str(n) for n in renamed]
        root = yaml_root(spec, data)
        for key in ("train", "val"):
            if not data.get(key):
                raise DatasetError(f"{where}: key '{key}' is missing (the {'pool' if key == 'train' else 'val split'})")
        folder = os.path.join(out, "dataset")
        train_index, val_index = os.path.join(folder, "train-index.tsv"), os.path.join(folder, "val-index.tsv")
        fit_index, fit_source = os.path.join(folder, "fit-index.tsv"), f"{spec} key 'test'"
        splits = (("train", train_index), ("val", val_index)) + ((("test", fit_index),) if data.get("test") else ())
        for key, index in splits:
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
    fit = read_split("fit", fit_index, class_names, export_format).samples if os.path.isfile(fit_index) else []
    return Data(pool, {k: annotation[k] for k in pool}, val_index, list(val.samples), class_names, root,
                {os.path.relpath(k, root): v for k, v in left_out.items()}, fingerprint.hexdigest(),
                {s.image: s for s in samples}, fit, fit_source if fit else "")
