"""Training: settings → dataset (read, validated, exported as YOLO) → Ultralytics training with our hooks →
our own evaluation → model stages in result.yaml, best weights exported to ONNX. Wiring only.
The simulator (executor/simulate/) asks for less through run_training's keywords: no Ultralytics validation (the
last epoch is the best stage), no ONNX attachment, and the val predictions of the final evaluation handed back.

Progress: 0-5 % dataset, 5-90 % epochs (and batches), 90-100 % final evaluation and export.
Stages: `best` (Ultralytics' best.pt) and, unless save_best_only, `epoch_<k>` every save_period epochs
(at most 10 kept); with export_int8 a stage `int8` (best-int8.onnx, its own metrics), never the best stage. result.yaml is rewritten after every saved stage, so a crash leaves a usable package.
The family is settings.object_type (the image's manifest): 2 detection, 4 instance segmentation (seg-coco masks,
a segmentation model, maskAP from executor/engine/seg_eval.py next to the box metrics).
"""
import glob
import json
import logging
import os
import shlex
import shutil
import tempfile
import time
from contextlib import contextmanager
from typing import Sequence

import torch
import yaml

from executor.engine import trainer
from executor.engine.evaluation import VAL_IOU, VAL_MAX_DET, Metrics, evaluate
from executor.engine.images import read_image
from executor.engine.loading import export_onnx, load_detector
from executor.engine.quantize import quantize_int8
from executor.errors import ConfigError, ModelError
from executor.protocol.dataset import export_yolo, read_dataset, summary
from executor.protocol.env import resolve_weights
from executor.protocol.monitor import Progress, span
from executor.protocol.settings import Settings
from executor.protocol.writers import atomic_write_text, write_training_result
from executor.report.val_preview import grid, preview_cell
from executor.shared import DETECTION, FAMILIES, SEGMENTATION
from executor.shared import Sample

log = logging.getLogger(__name__)
PREPARE, TRAIN = (0.0, 0.05), (0.05, 0.90)
FINISH = (TRAIN[1], 1.0)
MAX_STAGES = 11  # the SDK keeps the best stage and the 10 most recent ones
BEST = "best"
INT8 = "int8"  # the best stage quantised (export_int8): listed with its metrics, never the best stage
INT8_OPSET = 13  # per-channel QDQ needs DequantizeLinear's axis (opset 13)
CALIBRATION_IMAGES = 200  # training images that calibrate the int8 activation ranges
PREVIEW_IMAGES, PREVIEW_CELL, PREVIEW_CONF = 4, 320, 0.25  # the per-epoch picture: val images, pixels, conf
PLOT_FILES = ("results.csv", "results.png", "labels.jpg", "train_batch*.jpg", "val_batch*.jpg", "*_curve.png",
              "confusion_matrix*.png")  # Ultralytics' pictures copied into the tensorboard folder
PLOT_IMAGES = ("*PR_curve.png", "*F1_curve.png", "confusion_matrix_normalized.png", "results.png")  # and shown


# ---------------------------------------------------------------- weights and arguments

def bundled_weights(model_name: str, dirs: Sequence[str]) -> str | None:
    """`<model>.pt` in the first directory that has it."""
    stem = os.path.splitext(os.path.basename(model_name.strip()))[0]
    for folder in dirs:
        path = os.path.join(folder, f"{stem}.pt")
        if os.path.isfile(path):
            return path
    return None


def object_type(settings: Settings) -> int:
    return settings.get("object_type") or DETECTION


def train_task(settings: Settings) -> str:
    """The Ultralytics task the image's family trains ('detect', 'segment')."""
    return trainer.TASK_OF_OBJECT_TYPE[object_type(settings)]


def choose_weights(settings: Settings, models_dir: str, dirs: Sequence[str]) -> str:
    """pretrained_model_params, else the bundled weights of `model`, else (segmentation) the bundled weights of
    its detection counterpart (yolov8n-seg → yolov8n.pt, whose matching tensors the adapter transfers), else its
    YAML (from scratch). Never a name that Ultralytics would download."""
    pretrained = settings.get("pretrained_model_params") or ()
    if pretrained:
        path = resolve_weights(tuple(pretrained), models_dir, (".pt",))
        log.info("training starts from pretrained_model_params: %s", path)
        return path
    model_yaml = trainer.model_yaml(settings.model, train_task(settings))
    path = bundled_weights(settings.model, dirs)
    if path:
        log.info("training starts from the bundled weights of %s: %s", settings.model, path)
        return path
    if train_task(settings) == "segment":
        stem = os.path.splitext(os.path.basename(model_yaml))[0]
        detection = bundled_weights(stem[:-len("-seg")], dirs) if stem.endswith("-seg") else None
        if detection:
            log.info("training starts from %s, seeded with the bundled detection weights %s", stem, detection)
            return detection
    log.warning("no weights for model %s (no pretrained_model_params, no bundled weights in %s): "
                "training from scratch (%s)", settings.model, os.pathsep.join(dirs) or "''", model_yaml)
    return model_yaml


def parse_args_options(text: str) -> dict:
    """'mosaic=0.5 close_mosaic=0 --fliplr=0.2 --rect' → {mosaic: 0.5, close_mosaic: 0, fliplr: 0.2, rect: True}.
    Values are YAML scalars or flow lists (safe_load: never evaluated as code); 'none' / 'null' → None."""
    try:
        tokens = shlex.split(text or "")
    except ValueError as exc:
        raise ConfigError(f"config key 'args_options': {exc}") from None
    args = {}
    for token in tokens:
        key, sep, value = token.partition("=")
        bare = key.startswith("-") and not sep
        key = key.lstrip("-").replace("-", "_").strip()
        if not key or not key.isidentifier() or (not sep and not bare):
            raise ConfigError(f"config key 'args_options': {token!r} is not key=value")
        if bare:
            parsed = True
        elif value.strip().lower() in ("none", "null", ""):
            parsed = None
        else:
            try:
                parsed = yaml.safe_load(value)
            except yaml.YAMLError:
                raise ConfigError(f"config key 'args_options': cannot read the value of {token!r}") from None
            if isinstance(parsed, dict):
                raise ConfigError(f"config key 'args_options': {token!r}: mappings are not allowed")
        if key in args:
            log.warning("args_options sets '%s' twice; the last value is used", key)
        args[key] = parsed
    return args


# ---------------------------------------------------------------- stages and result.yaml

class StageBook:
    """The model stages of this run; result.yaml (and a JSON copy of the book) rewritten after each change.

    The files of the best stage are also hard-linked into models_dir itself: the legacy result form needs
    them there, and tools that list models_dir's top level (the ymir verifier's tmi) find the weights."""

    def __init__(self, models_dir: str, result_file: str, multi_stage: bool, evaluate_config: dict, state_file: str,
                 object_type: int = DETECTION):
        self.models_dir, self.result_file, self.state_file = models_dir, result_file, state_file
        self.multi_stage, self.evaluate_config = multi_stage, evaluate_config
        self.object_type = object_type
        self.stages: dict[str, dict] = {}
        self.attachments: dict[str, list[str]] = {}
        self.root_files: list[str] = []

    def stage_path(self, stage: str, file: str) -> str:
        return os.path.join(self.models_dir, stage, file)

    def attachment_path(self, section: str, file: str) -> str:
        return os.path.join(self.models_dir, "attachments", section, file)

    def add(self, stage: str, files: list[str], metrics: dict) -> None:
        self.stages.pop(stage, None)  # re-added stages count as the newest
        self.stages[stage] = {"files": list(files), "timestamp": int(time.time()), **metrics}
        while len(self.stages) > MAX_STAGES:
            oldest = min((n for n in self.stages if n != BEST), key=lambda n: self.stages[n]["timestamp"])
            del self.stages[oldest]
            shutil.rmtree(os.path.join(self.models_dir, oldest), ignore_errors=True)
        self.write()

    def attach(self, section: str, files: list[str]) -> None:
        self.attachments[section] = list(files)
        self.write()

    def best_stage_name(self) -> str:
        """The SDK's rule among the float stages (the int8 stage is a derivative of the best one): highest maskAP
        when the stages have one (segmentation), else highest mAP; the newest on ties."""
        order = {name: i for i, name in enumerate(self.stages)}  # within one second, the later addition

        def metric(name: str) -> float:
            stage = self.stages[name]
            return stage["maskAP"] if stage.get("maskAP") is not None else stage["mAP"]

        candidates = [name for name in self.stages if name != INT8] or list(self.stages)
        return max(candidates, key=lambda n: (metric(n), self.stages[n]["timestamp"], order[n]))

    def _link_root(self, sources: list[str]) -> list[str]:
        names = []
        for source in sources:
            name = os.path.basename(source)
            target, tmp = os.path.join(self.models_dir, name), os.path.join(self.models_dir, f".{name}.link")
            names.append(name)
            if os.path.exists(target) and os.path.samefile(source, target):
                continue  # (rename onto another link of the same file would do nothing)
            if os.path.lexists(tmp):
                os.unlink(tmp)
            try:
                os.link(source, tmp)
            except OSError:
                shutil.copyfile(source, tmp)
            os.replace(tmp, target)
        for stale in set(self.root_files) - set(names):
            if os.path.exists(os.path.join(self.models_dir, stale)):
                os.unlink(os.path.join(self.models_dir, stale))
        self.root_files = names
        return names

    def write(self) -> None:
        if not self.stages:
            return
        best = self.best_stage_name()
        sources = [self.stage_path(best, f) for f in self.stages[best]["files"]]
        sources += [self.attachment_path(s, f) for s, files in self.attachments.items() for f in files]
        legacy = self._link_root([p for p in sources if os.path.isfile(p)])
        write_training_result(self.result_file, self.stages, best, self.multi_stage, self.evaluate_config,
                              self.attachments, legacy, object_type=self.object_type)
        atomic_write_text(self.state_file, json.dumps({"stages": self.stages, "attachments": self.attachments,
                                                       "root_files": self.root_files}))

    def reload(self) -> None:
        """The book as last written (DDP workers write it in another process)."""
        if os.path.isfile(self.state_file):
            with open(self.state_file, encoding="utf-8") as handle:
                state = json.load(handle)
            self.stages, self.attachments = state["stages"], state["attachments"]
            self.root_files = state["root_files"]


# ---------------------------------------------------------------- hooks called during training

class TrainingHooks:
    """Progress, tensorboard scalars and pictures and stage saving, called by the adapter's trainer bridge (rank 0).
    `preview`: the picture of a few val images drawn after each epoch (None: no picture)."""

    def __init__(self, progress: Progress, tensorboard_dir: str, book: StageBook, evaluator: "Evaluator",
                 save_period: int, save_best_only: bool, preview: "EpochPreview | None" = None):
        self.progress, self.tensorboard_dir, self.book, self.evaluator = progress, tensorboard_dir, book, evaluator
        self.preview = preview
        self.save_period = save_period if not save_best_only else 0
        self._writer = None
        self._last_fraction = -1.0
        self.ultralytics_best: dict = {}  # Ultralytics' own validation of best.pt (not seen here under DDP)

    def __getstate__(self):  # pickled for DDP workers: no open event file
        return {**self.__dict__, "_writer": None}

    @property
    def writer(self):
        if self._writer is None:
            from tensorboardX import SummaryWriter

            self._writer = SummaryWriter(logdir=self.tensorboard_dir)
        return self._writer

    def scalars(self, values: dict, step: int, prefix: str = "") -> None:
        for tag, value in values.items():
            self.writer.add_scalar(prefix + tag, float(value), step)
        self.writer.flush()

    def text(self, tag: str, value: str) -> None:
        self.writer.add_text(tag, value, 0)
        self.writer.flush()

    def image(self, tag: str, rgb, step: int) -> None:
        self.writer.add_image(tag, rgb, step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def on_batch(self, epoch: int, epochs: int, fraction: float) -> None:
        done = (epoch - 1 + fraction) / max(1, epochs)
        if done - self._last_fraction >= 0.005:  # about 200 updates per run at most
            self._last_fraction = done
            self.progress(done)

    def on_epoch(self, report: trainer.EpochReport) -> None:
        self.progress(report.epoch / max(1, report.epochs))
        self.scalars(report.scalars, report.epoch)
        if self.preview is not None:
            picture = self.preview(report.last)
            if picture is not None:
                self.image("val/predictions", picture, report.epoch)
        log.info("epoch %d/%d: %s", report.epoch, report.epochs,
                 ", ".join(f"{k} {v:.4g}" for k, v in report.scalars.items() if not k.startswith("lr/")))
        if report.best_improved:  # provisional: Ultralytics' val mAP until our evaluation at the end
            trainer.export_weights(report.best, self.book.stage_path(BEST, "best.pt"))
            provisional = {"mAP": report.map50 or 0.0}
            if self.book.object_type == SEGMENTATION:
                provisional.update(maskAP=report.mask_map50 or 0.0, boxAP=report.map50 or 0.0)
            self.book.add(BEST, ["best.pt"], provisional)
        if self.save_period > 0 and report.epoch % self.save_period == 0:
            stage = f"epoch_{report.epoch}"
            weights = self.book.stage_path(stage, f"{stage}.pt")
            trainer.export_weights(report.last, weights)
            metrics = self.evaluator(weights)
            self.book.add(stage, [f"{stage}.pt"], metrics.stage_fields())
            self.scalars(eval_scalars(metrics), report.epoch, prefix="eval/")
            log.info("stage %s: %s", stage, describe(metrics))

    def on_final(self, scalars: dict) -> None:
        self.ultralytics_best = scalars
        log.info("Ultralytics' validation of best.pt: %s",
                 ", ".join(f"{k} {v:.4f}" for k, v in scalars.items() if k.startswith("metrics/")))


def eval_scalars(metrics: Metrics) -> dict:
    """Tensorboard scalars of our metrics (under eval/ for epoch stages, best/ for the final best stage)."""
    values = {"mAP50": metrics.mAP, "mAR50": metrics.mAR}
    if metrics.maskAP is not None:
        values.update(maskAP50=metrics.maskAP)
    return values


def describe(metrics: Metrics) -> str:
    text = f"mAP@0.5 {metrics.mAP:.4f}, mAR {metrics.mAR:.4f}"
    return text if metrics.maskAP is None else f"maskAP@0.5 {metrics.maskAP:.4f}, box {text}"


@contextmanager
def training_threads():
    """A detector takes every core; training resumes with its own thread count afterwards."""
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class Evaluator:
    """Our metrics of a weights file on the val split (picklable: DDP workers evaluate epoch stages); with
    `masks` (instance segmentation) mask and box metrics of a segmentation model (executor/engine/seg_eval.py)."""

    def __init__(self, samples: list[Sample], class_names: list[str], settings: Settings, evaluate_config: dict,
                 batch_size: int, masks: bool = False):
        self.samples, self.class_names, self.img_size = samples, class_names, settings.img_size
        self.gpu_id = settings.gpu_id.split(",")[0]
        self.threads = settings.get("cpu_threads", 0)  # the plan's count (training's template has no such key)
        self.iou_thr, self.conf_thr = evaluate_config["iou_thr"], evaluate_config["conf_thr"]
        self.batch_size = batch_size
        self.masks = masks

    def detector(self, weights: str, conf_thres: float):
        """`weights` (.pt: PyTorch, .onnx: ONNX Runtime) as a detector of this split's classes."""
        return load_detector(weights, "auto", self.gpu_id, self.img_size, class_names=self.class_names,
                             threads=self.threads, conf_thres=conf_thres, iou_thres=VAL_IOU, max_det=VAL_MAX_DET,
                             task="segment" if self.masks else "detect")

    def __call__(self, weights: str, progress: Progress = lambda f: None, keep: list | None = None) -> Metrics:
        """`keep` (detection only): a list that receives the val predictions (executor.engine.evaluation.evaluate)."""
        with training_threads():
            # the thresholds are the validator's (evaluation sets them); these only build the detector
            detector = self.detector(weights, self.conf_thr)
            if self.masks:
                from executor.engine.seg_eval import evaluate_segmentation

                return evaluate_segmentation(detector, self.samples, self.iou_thr, self.conf_thr, self.batch_size,
                                             progress)
            return evaluate(detector, self.samples, self.iou_thr, self.conf_thr, self.batch_size, progress, keep)


class EpochPreview:
    """The picture of the same few val images (spread over the split) with their labels and the predictions
    (conf >= PREVIEW_CONF) of an epoch's weights. Picklable (DDP workers draw it). A failure is a warning, once:
    training goes on without pictures."""

    def __init__(self, evaluator: Evaluator, count: int = PREVIEW_IMAGES):
        self.evaluator, self.samples = evaluator, spread(evaluator.samples, count)
        self.failed = False

    def __call__(self, weights: str):
        if self.failed or not self.samples:
            return None
        try:
            with training_threads():
                detector = self.evaluator.detector(weights, PREVIEW_CONF)
                cells = []
                for sample in self.samples:
                    image = read_image(sample.image)
                    canvas, box = detector.letterbox(image)
                    det = detector.predict_canvases(canvas[None], [box])[0]
                    cells.append(preview_cell(image, sample.boxes, sample.classes, det, detector.names, PREVIEW_CELL))
            return grid(cells, PREVIEW_CELL)
        except Exception as exc:  # noqa: BLE001 — the pictures are an extra; the training goes on
            self.failed = True
            log.warning("no val pictures in tensorboard (%s: %s)", type(exc).__name__, exc, exc_info=True)
            return None


def spread(items: Sequence, count: int) -> list:
    """Up to `count` of `items`, evenly spaced from the first (all of them when there are no more)."""
    if len(items) <= count:
        return list(items)
    return [items[i * len(items) // count] for i in range(count)]


def publish_plots(run_dir: str, hooks: TrainingHooks) -> None:
    """Ultralytics' results.csv and pictures (train_args' `plots`) copied from its run dir into the tensorboard
    folder; the curves, the normalised confusion matrix and results.png shown in tensorboard's images tab too."""
    import cv2

    names = sorted({os.path.basename(p) for pattern in PLOT_FILES for p in glob.glob(os.path.join(run_dir, pattern))})
    for name in names:
        shutil.copyfile(os.path.join(run_dir, name), os.path.join(hooks.tensorboard_dir, name))
    for name in sorted({os.path.basename(p) for pattern in PLOT_IMAGES
                        for p in glob.glob(os.path.join(run_dir, pattern))}):
        picture = cv2.imread(os.path.join(run_dir, name), cv2.IMREAD_COLOR)
        if picture is not None:
            hooks.image(f"plots/{os.path.splitext(name)[0]}", cv2.cvtColor(picture, cv2.COLOR_BGR2RGB), 0)
    log.info("training pictures in %s: %s", hooks.tensorboard_dir, ", ".join(names) or "none")


# ---------------------------------------------------------------- the task

def run_training(job, settings: Settings, progress: Progress, *, ultralytics_val: bool = True, onnx: bool = True,
                 val_predictions: list | None = None, error_model: bool = True) -> Metrics:
    """Train on job.training_index / job.val_index; stages and result.yaml under job.models_out. Returns our
    metrics of the best stage on the val split (those result.yaml gives it). The platform leaves the keywords
    alone; the simulator sets them: `ultralytics_val=False`: Ultralytics validates nothing (no per-epoch or
    final-epoch val, no final_eval of best.pt) and the best stage is the last epoch's weights; `onnx=False`: no
    ONNX attachment; `val_predictions` (detection): a list that receives the best stage's val predictions, in
    job.val_index's order (executor.engine.evaluation.evaluate's `keep`); `error_model=False`: no error model
    fitted (the simulator fits its own, never on the split it reports). The pictures (Ultralytics' plots and the
    per-epoch val preview in tensorboard) come with Ultralytics' validation."""
    class_names = list(settings.class_names)
    evaluate_config = dict(settings.evaluate_config)
    extra = trainer.check_train_args(parse_args_options(settings.args_options))
    device = trainer.train_device(settings.gpu_id)
    task = train_task(settings)
    segmentation = task == "segment"
    if segmentation and settings.get("export_int8"):
        raise ConfigError("config key 'export_int8': the int8 export is for detection models; this image trains "
                          f"{FAMILIES[object_type(settings)]} models: set it to false")
    model_yaml = trainer.model_yaml(settings.model, task) if segmentation else None  # seeded from a detection .pt
    source = choose_weights(settings, job.models_dir, job.weights_dirs)
    log.info("this image trains %s models (object_type %d)", FAMILIES[object_type(settings)], object_type(settings))

    span(progress, *PREPARE)(0.0)
    train, val = read_dataset(job.training_index, job.val_index, class_names, settings.export_format,
                              masks=segmentation)
    data_yaml = export_yolo(os.path.join(job.work_dir, "yolo_dataset"), (train, val), class_names)
    span(progress, *PREPARE)(1.0)

    book = StageBook(job.models_out, job.training_result, job.multi_stage_result, evaluate_config,
                     os.path.join(job.work_dir, "training-stages.json"), object_type(settings))
    evaluator = Evaluator(val.samples, class_names, settings, evaluate_config,
                          2 * settings.batch_size_per_gpu, masks=segmentation)  # as Ultralytics validates in training
    hooks = TrainingHooks(span(progress, *TRAIN), job.tensorboard_dir, book, evaluator,
                          settings.save_period, settings.save_best_only,
                          EpochPreview(evaluator) if ultralytics_val else None)
    hooks.text("dataset", "\n\n".join(summary(s, class_names) for s in (train, val)))
    args = trainer.train_args(settings, device, extra, plots=ultralytics_val)
    if not ultralytics_val:
        log.info("Ultralytics validates nothing in this run: the best stage is the last epoch's weights")
    log.info("training %s for %d epochs: %s", source, settings.epochs, args)
    audit = settings.get("label_audit", "off") != "off" and bool(job.label_audit) and not segmentation
    keep = val_predictions if val_predictions is not None else [] if audit else None
    started = time.monotonic()
    try:
        result = trainer.train_model(source, data_yaml, args, hooks, os.path.join(job.work_dir, "ultralytics", "train"),
                                     task, model_yaml, validate=ultralytics_val,
                                     freeze_bn_stats=settings.freeze_bn_stats)
        log.info("training took %.1f s", time.monotonic() - started)
        if ultralytics_val:
            publish_plots(result.run_dir, hooks)
        book.reload()
        metrics = finish(result, book, hooks, evaluator, settings, span(progress, *FINISH), onnx, keep,
                         error_model and settings.fit_error_model,
                         calibration=spread([s.image for s in train.samples], CALIBRATION_IMAGES),
                         work_dir=job.work_dir)
    finally:
        hooks.close()
    if audit:
        audit_labels(job.label_audit, settings.label_audit, book.stage_path(BEST, "best.pt"), evaluator, keep,
                     train.samples)
    return metrics


def finish(result: trainer.TrainResult, book: StageBook, hooks: TrainingHooks, evaluator: Evaluator,
           settings: Settings, progress: Progress, onnx: bool = True, keep: list | None = None,
           error_model: bool = True, calibration: Sequence[str] = (), work_dir: str | None = None) -> Metrics:
    """The best stage with our metrics (its val predictions into `keep`), its error model fitted on the val split
    unless not `error_model`, its ONNX export as an attachment unless not `onnx`, with export_int8 the int8 stage
    (calibrated on the images `calibration`, scratch files in `work_dir`), result.yaml; returns the metrics."""
    checkpoint = result.best or result.last
    if checkpoint is None:
        raise ModelError(f"training wrote no weights under {result.run_dir}")
    if result.best is None:
        log.warning("Ultralytics saved no best.pt; the best stage uses the last weights")
    best = book.stage_path(BEST, "best.pt")
    trainer.export_weights(checkpoint, best)
    metrics = evaluator(best, lambda f: progress(0.6 * f), keep)
    files = ["best.pt"] + (fit_error_model(best, evaluator, settings, lambda f: progress(0.6 + 0.1 * f))
                           if error_model else [])
    book.add(BEST, files, metrics.stage_fields())
    best_scalars = {**eval_scalars(metrics), "mAP50_95": metrics.mAP50_95}
    if metrics.maskAP is not None:
        best_scalars["maskAP50_95"] = metrics.maskAP50_95
        log.info("best stage: maskAP@0.5 %.4f, maskAP@[.5:.95] %.4f", metrics.maskAP, metrics.maskAP50_95)
    hooks.scalars(best_scalars, 0, prefix="best/")
    log.info("best stage: mAP@0.5 %.4f, mAR@0.5 %.4f, mAP@[.5:.95] %.4f, tp %d, fp %d, fn %d (iou %.2f, conf %.3f)",
             metrics.mAP, metrics.mAR, metrics.mAP50_95, metrics.tp, metrics.fp, metrics.fn,
             evaluator.iou_thr, evaluator.conf_thr)
    if "metrics/mAP50" in hooks.ultralytics_best:
        log.info("mAP@0.5 of best.pt on the val split: ours %.4f, Ultralytics val %.4f", metrics.mAP,
                 hooks.ultralytics_best["metrics/mAP50"])
    if metrics.maskAP is not None and "metrics/mask_mAP50" in hooks.ultralytics_best:
        log.info("mask mAP@0.5 of best.pt on the val split: ours %.4f, Ultralytics val %.4f", metrics.maskAP,
                 hooks.ultralytics_best["metrics/mask_mAP50"])
    if onnx:
        attach_onnx(book, best, settings)
        if settings.get("export_int8"):
            add_int8_stage(book, best, hooks, evaluator, settings, calibration, metrics, work_dir)
    progress(1.0)
    return metrics


def audit_labels(path: str, scope: str, best: str, evaluator: Evaluator, val_predictions: list,
                 train_samples: list[Sample]) -> None:
    """The label audit of the training's labels by its best stage (template key label_audit) into `path` and the
    .csv and .html beside it: the val split from the final evaluation's predictions (images the model never trained on),
    with `scope` 'all' the train split too, in a pass of its own and marked in-sample (a model has learnt its own
    training labels, mistakes included, so it accuses them less). A failure is a warning: the model package is
    complete without it."""
    from executor.pipeline.audit_report import write_audit_page
    from executor.pipeline.label_audit import audit_predictions, audit_samples, merged, settings_record, write_audit
    from mining.audit import CONFIDENT_CONF, SUPPORT_CONF

    try:
        parts = [audit_predictions(evaluator.samples, val_predictions, evaluator.class_names, CONFIDENT_CONF,
                                   SUPPORT_CONF, split="val")]
        if scope == "all":
            detector = load_detector(best, "torch", evaluator.gpu_id, evaluator.img_size,
                                     class_names=evaluator.class_names, threads=evaluator.threads,
                                     conf_thres=SUPPORT_CONF, iou_thres=VAL_IOU, max_det=VAL_MAX_DET)
            parts.append(audit_samples(detector, train_samples, CONFIDENT_CONF, SUPPORT_CONF, evaluator.batch_size,
                                       split="train"))
        about = {"model": {"weights": best, "classes": list(evaluator.class_names)},
                 "data": {"source": "the training's labelled set", "splits": ["val", "train"][:len(parts)],
                          "in_sample": ["train"] if scope == "all" else []},
                 "settings": settings_record(CONFIDENT_CONF, SUPPORT_CONF, evaluator.img_size, VAL_IOU)}
        found, stem = merged(parts), os.path.splitext(path)[0]
        write_audit(found, about, path, stem + ".csv")
        write_audit_page(found, list(evaluator.samples) + (list(train_samples) if scope == "all" else []), about,
                         stem + ".html", path)
    except Exception as exc:  # noqa: BLE001 — the training succeeded; the audit is an extra
        log.warning("label audit failed, no %s (%s: %s)", path, type(exc).__name__, exc, exc_info=True)


def fit_error_model(best: str, evaluator: Evaluator, settings: Settings, progress: Progress) -> list[str]:
    """[the file name of best's error model] fitted on the val split (the labelled images it did not train on;
    the mAP above was measured before and does not depend on it), or [] with a warning when it cannot be fitted:
    mining then uses the prior."""
    from executor.pipeline.error_fit import fit_weights

    try:
        config = {key: settings[key] for key in ("img_size", "gpu_id") if key in settings}
        config["gpu_id"] = str(config.get("gpu_id", "")).split(",")[0]
        path = fit_weights(best, evaluator.samples, "the val split of the training", config, progress)
    except ValueError as exc:
        log.warning("no error model for %s (%s): errors mining will use the prior", best, exc)
        return []
    return [os.path.basename(path)]


def add_int8_stage(book: StageBook, best: str, hooks: TrainingHooks, evaluator: Evaluator, settings: Settings,
                   calibration: Sequence[str], float_metrics: Metrics, work_dir: str | None) -> None:
    """The stage `int8`: `best` exported to ONNX (dynamic batch and size, as the evaluation batches its rectangles),
    statically quantised on the `calibration` images at img_size, evaluated like the best stage (same split, same
    code, ONNX Runtime). A failure is logged with its traceback and leaves no stage: the float model package is
    complete without it."""
    target = book.stage_path(INT8, "best-int8.onnx")
    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(dir=work_dir) as scratch:
            float_onnx = os.path.join(scratch, "best.onnx")
            export_onnx(best, float_onnx, settings.img_size, max(settings.opset, INT8_OPSET), dynamic=True)
            with training_threads():
                count = quantize_int8(float_onnx, target, calibration, settings.img_size, evaluator.threads)
        metrics = evaluator(target)
    except Exception:  # noqa: BLE001 — logged with its traceback; the package keeps its float stages
        log.exception("int8 export of %s failed; the model package has no int8 stage", best)
        shutil.rmtree(os.path.dirname(target), ignore_errors=True)
        return
    book.add(INT8, [os.path.basename(target)], metrics.stage_fields())
    hooks.scalars({**eval_scalars(metrics), "mAP50_95": metrics.mAP50_95}, 0, prefix="int8/")
    log.info("int8 stage (%d calibration images, %.1f s): mAP@0.5 %.4f (float %.4f), mAP@[.5:.95] %.4f (float %.4f)",
             count, time.monotonic() - started, metrics.mAP, float_metrics.mAP, metrics.mAP50_95,
             float_metrics.mAP50_95)


def attach_onnx(book: StageBook, best: str, settings: Settings) -> None:
    """`best` exported to ONNX as the attachment onnx/best.onnx (none when the export fails)."""
    target = book.attachment_path("onnx", "best.onnx")
    try:
        export_onnx(best, target, settings.img_size, settings.opset)
    except Exception:  # the package is complete without it; the failure is in the log with its traceback
        log.exception("ONNX export of %s failed; the model package has no onnx attachment", best)
    else:
        book.attach("onnx", [os.path.basename(target)])
