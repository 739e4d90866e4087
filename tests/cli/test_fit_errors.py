"""start.py fit-errors: its help says what to fit on, bad command lines exit 2 before the model loads, and a real
fit on coco8 writes `<stem>.errors.json` beside the weights, where mining with the errors algorithm finds it."""
import logging
from pathlib import Path

import pytest

from executor.cli import commands as cli
from executor.protocol.labelled import yaml_names
from executor.protocol.yaml_file import read_yaml_mapping
from mining.errors import read_error_model
from tests.cli.conftest import readme_example
from tests.ymir_builders import SHARED, WEIGHTS_DIR

COCO8 = SHARED / "data" / "coco8"
WEIGHTS = WEIGHTS_DIR / "yolov8n.pt"
pytestmark = pytest.mark.skipif(not (COCO8 / "data.yaml").is_file() or not WEIGHTS.is_file(),
                                reason="needs shared/data/coco8 and shared/weights/yolov8n.pt")


def parse(*argv):
    return cli.build_parser().parse_args([str(a) for a in argv])


def test_the_help_says_to_fit_on_images_the_model_did_not_train_on(capsys):
    with pytest.raises(SystemExit):
        parse("fit-errors", "--help")
    text = " ".join(capsys.readouterr().out.split())
    assert "Fit it on labelled images the model did NOT train on: its val or test split" in text
    assert "Never on its training images" in text and "<stem>.errors.json" in text
    for flag in ("--data", "--model", "--split", "--imgsz", "--device", "--out", "--set"):
        assert flag in text
    args = parse("fit-errors", "--data", "d.yaml", "--model", "m.pt", "--imgsz", 320, "--device", "cpu")
    assert cli.config_of(args)["img_size"] == 320 and cli.config_of(args)["gpu_id"] == ""
    args = parse(*readme_example("fit-errors"))  # the README's example is a valid command line
    assert (args.command, args.split, args.weights) == ("fit-errors", "val", "runs/best.pt")


@pytest.mark.parametrize("extra, needle", [
    (("--model", "none.pt"), "none.pt: no such file"),
    (("--out", "{tmp}"), "is a folder; give a file name"),
    (("--out", "{tmp}/best.pt"), "the error model is a .json file"),
    (("--out", "{tmp}/no/such/x.json"), "does not exist or is not writable"),
    (("--data", "{tmp}/coco8/images"), "--split val: only a data.yaml has splits"),
    (("--data", "{tmp}/none.yaml"), "none.yaml: no such file or folder"),
    (("--set", "imgsz=3"), "--set imgsz=3: unknown key 'imgsz'"),
    (("--imgsz", "-1"), "--imgsz"),
])
def test_a_bad_command_line_exits_2_before_the_model_loads(coco8_copy, tmp_path, capsys, extra, needle):
    data, weights = coco8_copy
    argv = {"--data": str(data / "data.yaml"), "--model": str(weights), "--split": "val"}
    rest = []
    for flag, value in zip(extra[::2], extra[1::2]):
        value = value.format(tmp=tmp_path)
        if flag in argv:
            argv[flag] = value
        else:
            rest += [flag, value]
    assert cli.run(parse("fit-errors", *(x for pair in argv.items() for x in pair), *rest)) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("error:") == 1, err


@pytest.mark.slow  # loads the real model: its class names, then the fit
def test_a_class_the_model_lacks_fails_with_status_1_naming_it(coco8_copy, caplog):
    data, weights = coco8_copy
    (data / "data.yaml").write_text((data / "data.yaml").read_text().replace("elephant", "okapi"))
    with caplog.at_level(logging.ERROR):
        assert cli.run(parse("fit-errors", "--data", data / "data.yaml", "--model", weights, "--imgsz", 160)) == 1
    assert "class 'okapi'" in caplog.text and "is not a class of the model" in caplog.text
    assert not (weights.parent / "yolov8n-copy.errors.json").exists()


@pytest.mark.slow  # the real yolov8n on the 8 coco8 images at 320, then mining with what it wrote
# (--conf 0.1: 32 kept boxes, 17 of them wrong, well above the fit's minimum; at 0.25 there are 21 of the 20 needed)
def test_fit_errors_writes_beside_the_weights_and_mining_finds_it(coco8_copy, tmp_path, capsys, caplog):
    from executor.api import mine

    data, weights = coco8_copy
    beside = tmp_path / "yolov8n-copy.errors.json"
    beside.write_text("{}")  # an older, broken one: replaced atomically, and the log says so
    model_names = yaml_names(read_yaml_mapping(str(data / "data.yaml"), "data.yaml"), "coco8")  # yolov8n's
    (data / "data.yaml").unlink()  # the YOLO folder form: all 8 images, names from classes.txt (another case)
    (data / "classes.txt").write_text("".join(f"{n.upper()}\n" for n in model_names))
    with caplog.at_level(logging.INFO):
        status = cli.run(parse("fit-errors", "--data", data, "--model", weights, "--imgsz", 320, "--conf", 0.1,
                               "--device", "cpu"))
    assert status == 0, caplog.text
    assert f"{beside} exists: it is replaced (atomically) by the new fit" in caplog.text
    out = capsys.readouterr().out
    model = read_error_model(str(beside))
    assert model.fitted and model.fitted_on["images"] == 8 and model.fitted_on["source"] == f"the YOLO folder {data}"
    assert model.class_names == model_names
    assert f"fitted on 8 images of the YOLO folder {data}" in out
    assert model.conf_thres == 0.1
    assert f"kept boxes (conf > 0.1, at most 100 per image): {model.fitted_on['boxes']}, false positives " \
           f"{model.fitted_on['false_positives']}, missed objects {model.fitted_on['misses']}" in out
    assert f"written to {beside}" in out and "--algorithm errors reads it" in out

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="executor.pipeline.plan"):
        ranking = mine(str(data / "images" / "val"), str(weights), algorithm="errors", imgsz=320)
    assert len(ranking) == 4
    found = [r.getMessage() for r in caplog.records if r.name == "executor.pipeline.plan"]
    assert any(f"errors: error model {beside}, fitted on 8 images" in m for m in found), found

    elsewhere = tmp_path / "other.json"  # --out: written there, and the summary says mining will not find it
    assert cli.run(parse("fit-errors", "--data", data, "--model", weights, "--imgsz", 320, "--conf", 0.1,
                         "--out", elsewhere)) == 0
    assert read_error_model(str(elsewhere)).fitted_on == model.fitted_on
    assert f"mining reads only {beside} (beside the model): copy it there to use it" in capsys.readouterr().out
