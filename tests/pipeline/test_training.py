import json
import os
import re

import pytest
import yaml

from executor.engine import trainer as adapter
from executor.errors import ConfigError, ModelError, NoGpuError
from executor.pipeline.training import (BEST, MAX_STAGES, StageBook, TrainingHooks, bundled_weights, choose_weights,
                                        parse_args_options)
from executor.protocol.settings import build_settings
from executor.protocol.writers import write_training_result
from tests.ymir_builders import WEIGHTS_DIR, read_images, read_scalars


# ---------------------------------------------------------------- args_options

@pytest.mark.parametrize("text, expected", [
    ("", {}),
    ("mosaic=0.5 close_mosaic=0", {"mosaic": 0.5, "close_mosaic": 0}),
    ("--fliplr=0.2 --rect", {"fliplr": 0.2, "rect": True}),
    ("cache=false single-cls=true", {"cache": False, "single_cls": True}),
    ("time=none", {"time": None}),
    ("copy_paste_mode='mixup' hsv_h='0.02'", {"copy_paste_mode": "mixup", "hsv_h": 0.02}),
    ('box=7 box=8', {"box": 8}),
    ("__import__('os').system('true')=1", None),
])
def test_parse_args_options(text, expected):
    if expected is None:
        with pytest.raises(ConfigError, match="args_options"):
            parse_args_options(text)
    else:
        assert parse_args_options(text) == expected


@pytest.mark.parametrize("text, needle", [
    ("mosaic", "is not key=value"),
    ("mosaic='0.5", "args_options"),
    ("hsv_h={a:1}", "mappings are not allowed"),
    ("mosiac=0.5", "'mosiac' is not an Ultralytics train argument (did you mean mosaic"),
    ("no_such_thing=1", "'no_such_thing' is not an Ultralytics train argument"),
    ("epochs=3", "'epochs' is set by config key 'epochs'"),
    ("batch=8", "set by config key 'batch_size_per_gpu'"),
    ("data=/etc/passwd", "'data' is set by the executor"),
    ("mosaic=lots", "mosaic"),
    ("close_mosaic=0.5", "close_mosaic"),
])
def test_args_options_errors_are_config_errors(text, needle):
    with pytest.raises(ConfigError) as err:
        adapter.check_train_args(parse_args_options(text))
    assert needle in str(err.value) and err.value.code == 300001


def test_args_options_accepts_ultralytics_train_keys():
    args = adapter.check_train_args(parse_args_options("mosaic=0.5 close_mosaic=0 hsv_h=0.02 rect=true fraction=0.5"))
    assert args == {"mosaic": 0.5, "close_mosaic": 0, "hsv_h": 0.02, "rect": True, "fraction": 0.5}
    assert "mosaic" in adapter.train_arg_keys() and "lr0" in adapter.train_arg_keys()


def test_ultralytics_args_from_the_template():
    settings = build_settings("training", {"batch_size_per_gpu": 8, "img_size": 320, "optimizer": "adamw",
                                           "freeze": "10"})
    args = adapter.train_args(settings, "0,1", {"mosaic": 0.0, "plots": True})
    assert args["batch"] == 16 and args["imgsz"] == 320 and args["optimizer"] == "AdamW" and args["freeze"] == 10
    assert args["device"] == "0,1" and args["mosaic"] == 0.0 and args["plots"] is True
    assert adapter.train_args(settings, "cpu", {})["batch"] == 8
    assert {"save_period", "project", "data"}.isdisjoint(args)


@pytest.mark.parametrize("key, value", [("epochs", 0), ("optimizer", "Adagrad"), ("lr0", -1), ("freeze", "a,b"),
                                        ("save_best_only", "maybe"), ("evaluate_config", "0.5")])
def test_training_keys_are_validated(key, value):
    with pytest.raises(ConfigError, match=f"'{key}"):
        build_settings("training", {key: value})


def test_evaluate_config_keeps_the_defaults_of_the_keys_it_leaves_out():
    defaults = build_settings("training", {}).evaluate_config
    assert set(defaults) == {"iou_thr", "conf_thr"}
    assert build_settings("training", {"evaluate_config": {"iou_thr": 0.6}}).evaluate_config == {
        "iou_thr": 0.6, "conf_thr": defaults["conf_thr"]}


# ---------------------------------------------------------------- devices, models, weights

def test_train_device():
    assert adapter.train_device("") == "cpu"
    with pytest.raises(NoGpuError):
        adapter.train_device("7")


@pytest.mark.parametrize("name, ok", [("yolov8n", True), ("yolo11s", True), ("yolov8x.pt", True),
                                      ("yolov8n-seg", False), ("yolov99z", False)])
def test_detection_model_names(name, ok):
    if ok:
        assert adapter.detection_model_yaml(name).endswith(".yaml")
    else:
        with pytest.raises(ConfigError, match="config key 'model'"):
            adapter.detection_model_yaml(name)


def test_weights_choice(tmp_path, caplog):
    dirs = [str(tmp_path / "empty"), str(WEIGHTS_DIR)]
    assert bundled_weights("yolov8n", dirs) == str(WEIGHTS_DIR / "yolov8n.pt")
    assert bundled_weights("yolo11n", dirs) is None
    assert choose_weights(build_settings("training", {}), "", dirs) == str(WEIGHTS_DIR / "yolov8n.pt")
    assert choose_weights(build_settings("training", {"model": "yolo11n"}), "", dirs) == "yolo11n.yaml"
    assert "training from scratch (yolo11n.yaml)" in caplog.text
    (tmp_path / "m" / "best").mkdir(parents=True)
    (tmp_path / "m" / "best" / "best.pt").write_bytes(b"x")
    given = build_settings("training", {"pretrained_model_params": ["best/best.pt", "result.yaml"]})
    assert choose_weights(given, str(tmp_path / "m"), dirs) == str(tmp_path / "m" / "best" / "best.pt")
    with pytest.raises(ModelError):
        choose_weights(build_settings("training", {"pretrained_model_params": ["x.onnx"]}), str(tmp_path), dirs)


# ---------------------------------------------------------------- result.yaml

def stage(map_, **extra):
    return {"files": ["best.pt"], "timestamp": 1700000000, "mAP": map_, **extra}


def test_result_yaml_multi_stage(tmp_path):
    path = tmp_path / "result.yaml"
    write_training_result(str(path), {"best": stage(0.5, mAR=0.6, tp=3, fp=1, fn=2),
                                      "epoch_10": {"files": ["epoch_10.pt"], "timestamp": 1, "mAP": 0.4}},
                          "best", True, {"iou_thr": 0.5, "conf_thr": 0.005}, {"onnx": ["best.onnx"]})
    data = yaml.safe_load(path.read_text())
    assert data["best_stage_name"] == "best" and data["mAP"] == 0.5
    assert data["model_stages"]["best"] == {"stage_name": "best", "files": ["best.pt"], "timestamp": 1700000000,
                                            "mAP": 0.5, "mAR": 0.6, "tp": 3, "fp": 1, "fn": 2}
    assert data["model_stages"]["epoch_10"]["mAP"] == 0.4
    assert data["attachments"] == {"onnx": ["best.onnx"]} and data["evaluate_config"]["iou_thr"] == 0.5
    assert type(data["mAP"]) is float


def test_result_yaml_legacy(tmp_path):
    path = tmp_path / "result.yaml"
    write_training_result(str(path), {"best": stage(0.25)}, "best", False, legacy_files=["best.pt", "best.onnx"])
    assert yaml.safe_load(path.read_text()) == {"model": ["best.pt", "best.onnx"], "map": 0.25}


@pytest.mark.parametrize("stages, best, kwargs, needle", [
    ({"best": stage(71.2)}, "best", {}, "not a number in [0, 1]"),
    ({"best": stage(float("nan"))}, "best", {}, "not a number in [0, 1]"),
    ({"best": stage(0.5)}, "epoch_1", {}, "best_stage_name"),
    ({"best": dict(stage(0.5), files=["/out/models/best.pt"])}, "best", {}, "basenames"),
    ({"epoch-1": stage(0.5)}, "epoch-1", {}, "identifier"),
])
def test_result_yaml_rejects_bad_values(tmp_path, stages, best, kwargs, needle):
    with pytest.raises(ValueError, match=re.escape(needle)):
        write_training_result(str(tmp_path / "r.yaml"), stages, best, True, **kwargs)


def book(tmp_path, multi_stage=True) -> StageBook:
    models = tmp_path / "models"
    return StageBook(str(models), str(models / "result.yaml"), multi_stage, {"iou_thr": 0.5, "conf_thr": 0.005},
                     str(tmp_path / "state.json"))


def put(book_: StageBook, stage_name: str, file: str, text: str = "w") -> None:
    path = book_.stage_path(stage_name, file)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as handle:
        handle.write(text)


def test_stage_book_keeps_best_and_ten_latest_and_links_the_best(tmp_path):
    b = book(tmp_path)
    put(b, BEST, "best.pt", "best")
    b.add(BEST, ["best.pt"], {"mAP": 0.9})
    for k in range(1, 15):
        put(b, f"epoch_{k}", f"epoch_{k}.pt")
        b.add(f"epoch_{k}", [f"epoch_{k}.pt"], {"mAP": 0.1, "mAR": 0.2, "tp": 1, "fp": 2, "fn": 3})
        b.stages[f"epoch_{k}"]["timestamp"] -= 100 - k  # distinct, increasing timestamps
    data = yaml.safe_load((tmp_path / "models" / "result.yaml").read_text())
    assert len(data["model_stages"]) == MAX_STAGES
    assert BEST in data["model_stages"] and "epoch_1" not in data["model_stages"]
    assert not (tmp_path / "models" / "epoch_1").exists() and (tmp_path / "models" / "epoch_14").exists()
    assert data["best_stage_name"] == BEST
    assert (tmp_path / "models" / "best.pt").read_text() == "best"
    assert sorted(os.listdir(tmp_path / "models")) == sorted(
        ["best.pt", "result.yaml", BEST] + [f"epoch_{k}" for k in range(5, 15)])
    b.write()
    again = book(tmp_path)
    again.reload()
    assert again.stages == b.stages


def test_stage_book_best_stage_is_highest_map_then_newest(tmp_path):
    b = book(tmp_path)
    put(b, "epoch_1", "epoch_1.pt", "one")
    b.add("epoch_1", ["epoch_1.pt"], {"mAP": 0.5})
    assert yaml.safe_load(open(b.result_file))["best_stage_name"] == "epoch_1"
    assert (tmp_path / "models" / "epoch_1.pt").read_text() == "one"
    put(b, BEST, "best.pt", "best")
    b.add(BEST, ["best.pt"], {"mAP": 0.5})
    assert yaml.safe_load(open(b.result_file))["best_stage_name"] == BEST  # tie: the newer one
    assert not (tmp_path / "models" / "epoch_1.pt").exists()  # the root holds the best stage's files only


def test_stage_book_legacy_form_lists_root_files(tmp_path):
    b = book(tmp_path, multi_stage=False)
    put(b, BEST, "best.pt")
    b.add(BEST, ["best.pt"], {"mAP": 0.3, "mAR": 0.4})
    onnx = b.attachment_path("onnx", "best.onnx")
    os.makedirs(os.path.dirname(onnx))
    open(onnx, "w").write("onnx")
    b.attach("onnx", ["best.onnx"])
    data = yaml.safe_load(open(b.result_file))
    assert data == {"model": ["best.pt", "best.onnx"], "map": 0.3}
    assert all(os.path.isfile(tmp_path / "models" / f) for f in data["model"])


# ---------------------------------------------------------------- tensorboard and progress hooks

class FakeEvaluator:
    def __call__(self, weights, progress=None):
        from executor.engine.evaluation import Metrics
        assert os.path.isfile(weights)
        return Metrics(0.25, 0.5, 0.1, 4, 5, 6)


def test_hooks_write_tensorboard_scalars_progress_and_stages(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(adapter, "export_weights", lambda src, dst: (os.makedirs(os.path.dirname(dst), exist_ok=True),
                                                                     open(dst, "w").write(src)))
    b = book(tmp_path)
    hooks = TrainingHooks(seen.append, str(tmp_path / "tb"), b, FakeEvaluator(), save_period=2, save_best_only=False)
    for epoch in (1, 2):
        for batch in range(1, 5):
            hooks.on_batch(epoch, 2, batch / 4)
        hooks.on_epoch(adapter.EpochReport(
            epoch=epoch, epochs=2, map50=0.3 + epoch / 10, best_improved=epoch == 1, last="last.pt", best="best.pt",
            scalars={"train/box_loss": 3.0 - epoch, "train/cls_loss": 4.0, "metrics/precision": 0.5,
                     "metrics/recall": 0.4, "metrics/mAP50": 0.3 + epoch / 10, "metrics/mAP50-95": 0.2,
                     "lr/pg0": 0.01 / epoch}))
    hooks.close()
    scalars = read_scalars(tmp_path / "tb")
    for tag in ("train/box_loss", "train/cls_loss", "metrics/precision", "metrics/recall", "metrics/mAP50",
                "metrics/mAP50-95", "lr/pg0"):
        assert [step for step, _ in scalars[tag]] == [1, 2], tag
    assert scalars["train/box_loss"][1][1] == pytest.approx(1.0)
    assert scalars["eval/mAP50"] == [(2, pytest.approx(0.25))]
    assert seen == sorted(seen) and seen[-1] == 1.0 and len(seen) >= 4
    data = yaml.safe_load(open(b.result_file))
    assert set(data["model_stages"]) == {BEST, "epoch_2"}
    assert data["model_stages"][BEST]["mAP"] == pytest.approx(0.4)  # provisional: Ultralytics' val mAP
    assert data["model_stages"]["epoch_2"]["tp"] == 4 and data["best_stage_name"] == BEST


@pytest.mark.parametrize("onnx", [True, False])
def test_finish_attaches_onnx_unless_told_not_and_hands_back_the_val_predictions(tmp_path, monkeypatch, onnx):
    from executor.pipeline import training

    def export(best, target, img_size, opset):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        open(target, "w").write("onnx")

    class KeepingEvaluator(FakeEvaluator):
        iou_thr, conf_thr = 0.5, 0.005

        def __call__(self, weights, progress=None, keep=None):
            keep.append(f"predictions of {os.path.basename(weights)}")
            return super().__call__(weights, progress)

    monkeypatch.setattr(adapter, "export_weights", lambda src, dst: (os.makedirs(os.path.dirname(dst), exist_ok=True),
                                                                     open(dst, "w").write(src)))
    monkeypatch.setattr(training, "export_onnx", export)
    b, kept = book(tmp_path), []
    evaluator = KeepingEvaluator()
    hooks = TrainingHooks(print, str(tmp_path / "tb"), b, evaluator, 0, True)
    settings = build_settings("training", {"class_names": ["a"]})
    result = adapter.TrainResult(None, str(tmp_path / "last.pt"), str(tmp_path))
    metrics = training.finish(result, b, hooks, evaluator, settings, lambda f: None, onnx=onnx, keep=kept,
                              error_model=False)
    hooks.close()
    data = yaml.safe_load(open(b.result_file))
    assert kept == ["predictions of best.pt"] and data["model_stages"][BEST]["mAP"] == metrics.mAP == 0.25
    assert data.get("attachments") == ({"onnx": ["best.onnx"]} if onnx else None)
    assert (tmp_path / "models" / "attachments").exists() == onnx


def test_without_ultralytics_validation_every_epoch_is_the_best_and_nothing_validates():
    """train_model(validate=False)'s hook on Ultralytics' trainer: no metrics, a fitness that makes save_model write
    best.pt with every epoch (best_fitness == fitness) and that EarlyStopping never stops on."""
    from types import SimpleNamespace

    from ultralytics.utils.torch_utils import EarlyStopping

    def refuse(*args):
        raise AssertionError("Ultralytics validated")

    trainer = SimpleNamespace(epoch=0, best_fitness=None, validate=refuse, final_eval=refuse)
    (event, install), = adapter._LastIsBest().events().items()
    assert event == "on_pretrain_routine_end"
    install(trainer)
    stopper = EarlyStopping(patience=2)
    for epoch in range(6):
        trainer.epoch = epoch
        metrics, fitness = trainer.validate()
        assert metrics == {} and trainer.best_fitness == fitness
        assert not stopper(epoch + 1, fitness)
    assert trainer.final_eval() is None


def test_frozen_norms_keep_every_batchnorm_in_eval_while_the_rest_trains():
    """train_model(freeze_bn_stats=True)'s hook: before each batch every BatchNorm layer (of any kind) is put in eval
    mode, so a forward in training leaves its running statistics as they were; the other layers stay in train."""
    from types import SimpleNamespace

    import torch
    import torch.nn as nn

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5), nn.Sequential(nn.BatchNorm2d(4)))
    model.train()
    before = [m.running_mean.clone() for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    (event, freeze), = adapter._FrozenNorms().events().items()
    assert event == "on_train_batch_start"
    freeze(SimpleNamespace(model=model))
    model(torch.rand(2, 3, 8, 8) * 50)
    after = [m.running_mean for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.equal(x, y) for x, y in zip(before, after)) and len(after) == 2
    assert model.training and model[2].training and not model[1].training
    assert build_settings("training", {"freeze_bn_stats": "true"}).freeze_bn_stats is True


def test_hooks_pickle_without_the_event_writer(tmp_path):
    import pickle
    hooks = TrainingHooks(print, str(tmp_path / "tb"), book(tmp_path), FakeEvaluator(), 1, True)
    hooks.scalars({"a": 1.0}, 1)
    clone = pickle.loads(pickle.dumps(hooks))
    assert clone._writer is None and clone.save_period == 0
    hooks.close()


# ---------------------------------------------------------------- end to end (real training, CPU)

def run_training_start(env_path, tmp_path, monkeypatch):
    """Platform mode in this process (tests.platform.run_platform); returns its log and what the training task
    returned (executor.pipeline.tasks.train: our metrics of the best stage)."""
    from executor.pipeline import tasks
    from tests.platform import run_platform

    returned = []
    monkeypatch.setitem(tasks.TASKS, "training", lambda *args: returned.append(tasks.train(*args)) or returned[-1])
    before = sorted(str(p) for p in (tmp_path / "in").rglob("*"))
    status, log = run_platform(env_path, {"QUARRY_WEIGHTS_DIR": str(WEIGHTS_DIR)})
    assert status == 0, log[-3000:]
    assert sorted(str(p) for p in (tmp_path / "in").rglob("*")) == before  # nothing written next to the inputs
    fields = (tmp_path / "out" / "monitor.txt").read_text().splitlines()[0].split("\t")
    assert fields[2:5] == ["1.0000", "2", "0"]
    return log, returned[0]


@pytest.mark.slow
def test_start_trains_on_voc_ark_with_epoch_stages(tmp_path, monkeypatch):
    from executor.pipeline import training
    from tests.ymir_builders import voc_items, voc_names, write_dataset, write_training_env
    items = voc_items(32)
    index = write_dataset(tmp_path / "in", items[:24], items[24:], voc_names(), "ark")
    env = write_training_env(tmp_path, voc_names(), {"epochs": 1, "img_size": 128, "batch_size_per_gpu": 8,
                                                     "save_best_only": False, "save_period": 1, "export_int8": True})
    monkeypatch.setattr(training, "CALIBRATION_IMAGES", 8)
    validations = count_validations(monkeypatch)
    log, metrics = run_training_start(env, tmp_path, monkeypatch)
    assert validations == [1, 1]  # the platform's result.yaml as ever: Ultralytics validated epoch 1 and best.pt
    models = tmp_path / "out" / "models"
    data = yaml.safe_load((models / "result.yaml").read_text())
    assert set(data["model_stages"]) == {"best", "epoch_1", "int8"} and data["best_stage_name"] in {"best", "epoch_1"}
    assert data["model_stages"]["int8"]["files"] == ["best-int8.onnx"]  # evaluated as the float stages are
    assert "int8 stage (8 calibration images" in log
    check_the_training_pictures(tmp_path / "out" / "tensorboard")
    best = data["model_stages"]["best"]  # the training task returns the best stage's metrics, as result.yaml has them
    assert {key: best[key] for key in ("mAP", "mAR", "tp", "fp", "fn")} == metrics.stage_fields()
    assert 0 <= metrics.mAP50_95 <= 1 and metrics.maskAP is None
    for name, stage_ in data["model_stages"].items():
        assert all((models / name / f).is_file() for f in stage_["files"])
        assert type(stage_["mAP"]) is float and 0 <= stage_["mAP"] <= 1 and 0 <= stage_["mAR"] <= 1
        assert {"tp", "fp", "fn"} <= set(stage_)
    assert data["attachments"] == {"onnx": ["best.onnx"]}
    assert (models / "attachments" / "onnx" / "best.onnx").stat().st_size > 1e6
    scalars = read_scalars(tmp_path / "out" / "tensorboard")
    for tag in ("train/box_loss", "train/cls_loss", "train/dfl_loss", "metrics/precision", "metrics/recall",
                "metrics/mAP50", "metrics/mAP50-95", "lr/pg0", "best/mAP50", "int8/mAP50"):
        assert tag in scalars, (tag, sorted(scalars))
    assert scalars["metrics/mAP50"][0][0] == 1
    ours, theirs = map(float, re.search(r"val split: ours ([\d.]+), Ultralytics val ([\d.]+)", log).groups())
    assert abs(ours - theirs) < 0.01 and ours == pytest.approx(data["model_stages"]["best"]["mAP"], abs=1e-4)
    audit = json.loads((tmp_path / "out" / "label-audit.json").read_text())  # label_audit: val, the default
    assert audit["data"]["splits"] == ["val"] and audit["images"] == 8 and audit["boxes"] > 0
    assert {f["split"] for f in audit["findings"]} <= {"val"} and (tmp_path / "out" / "label-audit.csv").is_file()
    assert "label-audit.json" in (tmp_path / "out" / "label-audit.html").read_text()  # the page names its json
    assert not any("label-audit" in p.name for p in models.rglob("*"))  # not in the model package
    check_the_simulators_training(tmp_path / "sim", index, validations)


def check_the_training_pictures(folder):
    """The val preview after each epoch (4 of the 8 val images, 2 x 2 cells of 320 px, the labelled boxes drawn in
    the audit page's green), the final plots in the images tab, Ultralytics' files beside the event file."""
    import numpy as np

    from executor.report.audit_page import TRUTH_RGB

    images = read_images(folder)
    assert [step for step, _ in images["val/predictions"]] == [1]
    preview = images["val/predictions"][0][1]
    assert preview.shape == (640, 640, 3) and (preview == TRUTH_RGB).all(axis=2).sum() > 100
    for tag in ("plots/BoxPR_curve", "plots/BoxF1_curve", "plots/confusion_matrix_normalized", "plots/results"):
        assert tag in images and images[tag][0][1].std() > 0, (tag, sorted(images))
    files = {p.name for p in folder.iterdir()}
    assert {"results.csv", "results.png", "labels.jpg", "train_batch0.jpg", "BoxPR_curve.png", "BoxF1_curve.png",
            "confusion_matrix.png", "confusion_matrix_normalized.png"} <= files, sorted(files)
    rows = (folder / "results.csv").read_text().splitlines()
    assert len(rows) == 2 and rows[0].startswith("epoch") and rows[1].startswith("1")


def count_validations(monkeypatch) -> list:
    """Calls of Ultralytics' validator, each as 1 (the list a test reads)."""
    from ultralytics.engine.validator import BaseValidator

    calls, validate = [], BaseValidator.__call__

    def counted(self, *args, **kwargs):
        calls.append(1)
        return validate(self, *args, **kwargs)

    monkeypatch.setattr(BaseValidator, "__call__", counted)
    return calls


def check_the_simulators_training(out, index, validations):
    """run_training as the simulator calls it (2 epochs): Ultralytics validates nothing, best.pt is the last epoch's
    checkpoint, no ONNX attachment, the val predictions of our one evaluation handed back."""
    from executor.pipeline.job import Job
    from executor.pipeline.training import run_training
    from tests.ymir_builders import voc_names

    validations.clear()
    settings = build_settings("training", {"class_names": voc_names(), "epochs": 2, "img_size": 128,
                                           "batch_size_per_gpu": 8})
    job = Job(training_index=str(index["train"]), val_index=str(index["val"]), models_out=str(out / "models"),
              training_result=str(out / "models" / "result.yaml"), tensorboard_dir=str(out / "tb"),
              work_dir=str(out / "work"), weights_dirs=(str(WEIGHTS_DIR),))
    predictions: list = []
    metrics = run_training(job, settings, lambda f: None, ultralytics_val=False, onnx=False,
                           val_predictions=predictions)
    assert validations == []
    weights = out / "work" / "ultralytics" / "train" / "weights"
    assert (weights / "best.pt").read_bytes() == (weights / "last.pt").read_bytes()
    data = yaml.safe_load((out / "models" / "result.yaml").read_text())
    assert "attachments" not in data and not (out / "models" / "attachments").exists()
    assert data["model_stages"]["best"]["mAP"] == metrics.mAP
    assert len(predictions) == 8 and sum(map(len, predictions)) > 0
    scalars = read_scalars(out / "tb")
    assert "train/box_loss" in scalars and not any(tag.startswith("metrics/") for tag in scalars)
    assert read_images(out / "tb") == {} and not list((out / "tb").glob("*.png"))  # no pictures either


@pytest.mark.slow
def test_start_trains_on_coco_json_with_the_legacy_result(tmp_path, monkeypatch):
    from tests.ymir_builders import write_coco_val_dataset, write_training_env
    names = write_coco_val_dataset(tmp_path / "in", 16, 6)
    env = write_training_env(tmp_path, names, {"epochs": 1, "img_size": 128, "batch_size_per_gpu": 8,
                                               "export_format": "seg-coco:raw", "label_audit": "all"},
                             protocol_version=None)
    _, metrics = run_training_start(env, tmp_path, monkeypatch)
    audit = json.loads((tmp_path / "out" / "label-audit.json").read_text())  # label_audit: all, train in-sample
    assert audit["data"]["splits"] == ["val", "train"] and audit["data"]["in_sample"] == ["train"]
    assert audit["images"] == 22 and {f["split"] for f in audit["findings"]} == {"val", "train"}  # 16 + 6
    models = tmp_path / "out" / "models"
    data = yaml.safe_load((models / "result.yaml").read_text())
    # (1 box above conf_thres on the 6 val images at 128 px: too few to fit an error model, so none is listed)
    assert data["model"] == ["best.pt", "best.onnx"] and 0 < data["map"] <= 1  # COCO weights on COCO classes
    assert data["map"] == metrics.mAP
    assert all((models / f).is_file() for f in data["model"])


def coco_val_samples(count: int):
    """The first `count` coco-val images as labelled samples in the COCO model's class indices (crowds left out)."""
    import json

    import numpy as np

    from executor.shared import Sample
    from tests.platform import COCO_VAL

    data = json.loads((COCO_VAL / "annotations.json").read_text())
    index = {c["id"]: i for i, c in enumerate(sorted(data["categories"], key=lambda c: c["id"]))}
    samples = []
    for image in sorted(data["images"], key=lambda i: i["file_name"])[:count]:
        anns = [a for a in data["annotations"] if a["image_id"] == image["id"] and not a.get("iscrowd")]
        boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)], np.float32).reshape(-1, 4)
        samples.append(Sample(str(COCO_VAL / "images" / image["file_name"]), image["width"], image["height"], "jpg",
                              boxes, np.array([index[a["category_id"]] for a in anns], np.int64)))
    return samples


@pytest.mark.slow
def test_finish_fits_the_best_stages_error_model_on_the_val_split_and_lists_it(tmp_path, monkeypatch):
    """The real COCO model as the best stage, 40 coco-val images as the val split: best.errors.json beside best.pt,
    in the stage's files of result.yaml (what the platform hands mining), fitted on those images."""
    import shutil

    from executor.pipeline import training
    from mining.errors import read_error_model
    from tests.platform import WEIGHTS, coco_names

    class ValEvaluator(FakeEvaluator):
        samples, iou_thr, conf_thr = coco_val_samples(40), 0.5, 0.005

        def __call__(self, weights, progress=None, keep=None):
            return super().__call__(weights, progress)

    monkeypatch.setattr(adapter, "export_weights", lambda src, dst: (os.makedirs(os.path.dirname(dst), exist_ok=True),
                                                                     shutil.copy(WEIGHTS, dst)))
    b = book(tmp_path)
    hooks = TrainingHooks(print, str(tmp_path / "tb"), b, ValEvaluator(), 0, True)
    settings = build_settings("training", {"class_names": coco_names(), "img_size": 320})
    result = adapter.TrainResult(None, str(tmp_path / "last.pt"), str(tmp_path))
    training.finish(result, b, hooks, ValEvaluator(), settings, lambda f: None, onnx=False)
    hooks.close()
    data = yaml.safe_load(open(b.result_file))
    assert data["model_stages"][BEST]["files"] == ["best.pt", "best.errors.json"]
    errors = read_error_model(str(tmp_path / "models" / BEST / "best.errors.json"))
    assert errors.fitted and errors.fitted_on["images"] == 40
    assert errors.fitted_on["source"] == "the val split of the training" and errors.class_names == coco_names()
    assert errors.fitted_on["false_positives"] > 0 and errors.fitted_on["misses"] > 0


def test_a_failed_label_audit_is_a_warning_and_writes_nothing(tmp_path, caplog):
    """The training succeeded: an audit that fails (here, predictions of inconsistent shapes) leaves no file and says
    why in a warning; it never fails the task."""
    from types import SimpleNamespace

    import numpy as np

    from executor.pipeline.training import audit_labels
    from executor.shared import Sample

    sample = Sample("a.jpg", 100, 100, "jpg", np.array([[10, 10, 50, 50]], np.float32), np.array([0]))
    broken = SimpleNamespace(xyxy=np.zeros((2, 4)), conf=np.ones(1), cls=np.zeros(2, np.int64), probs=None)
    evaluator = SimpleNamespace(samples=[sample], class_names=["cat"], img_size=128)
    path = tmp_path / "label-audit.json"
    audit_labels(str(path), "val", "best.pt", evaluator, [broken], [])
    assert not path.exists() and not (tmp_path / "label-audit.csv").exists()
    assert "label audit failed, no" in caplog.text and "inconsistent shapes" in caplog.text


def test_export_int8_is_refused_for_segmentation_naming_the_key():
    from types import SimpleNamespace

    from executor.pipeline.training import run_training
    from executor.protocol.templates import family_templates
    from executor.shared import SEGMENTATION

    settings = build_settings("training", {"class_names": ["cat"], "export_int8": True},
                              family_templates(SEGMENTATION))
    with pytest.raises(ConfigError, match="config key 'export_int8'.*detection models") as err:
        run_training(SimpleNamespace(), settings, lambda f: None)
    assert err.value.code == 300001
