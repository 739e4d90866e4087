"""Mining with `errors` end to end in this process (the fake detector): the weights' error model beside them is
found, named in the log and the report, and changes the scores; without one the prior applies and says so; a
broken file stops the run before any image is read."""
import json
import shutil

import pytest

from executor.errors import ModelError
from executor.pipeline import tasks
from executor.pipeline.job import Job
from executor.pipeline.plan import make_plan
from tests.mining.test_errors import synthetic_examples
from tests.pipeline.fake_detector import NAMES, fake_models
from tests.platform import WEIGHTS, coco_images

from mining.errors import fit_error_model

IMAGES = [str(p) for p in coco_images(8)]


def mine(tmp_path, weights, name, caplog, **extra):
    out = tmp_path / name
    job = Job(candidates=IMAGES, mining_result=str(out / "result.tsv"), work_dir=str(out),
              report_html=str(out / "mining-report.html"))
    caplog.clear()
    config = {"model_params_path": [str(weights)], "class_names": list(NAMES), "img_size": 160,
              "mining_algorithm": "errors", **extra}
    tasks.run(make_plan(["mining"], job, config), models=fake_models())
    plan_lines = [r.getMessage() for r in caplog.records if r.name == "executor.pipeline.plan"]
    report = json.loads((out / "mining-report.json").read_text())
    rows = [line.split("\t") for line in (out / "result.tsv").read_text().splitlines()]
    return {k: float(s) for k, s in rows}, plan_lines, report["run"]["error_model"]


def test_mining_finds_the_error_model_beside_the_weights_and_says_which(tmp_path, caplog):
    caplog.set_level("INFO", "executor")
    weights = tmp_path / "model" / "best.pt"
    weights.parent.mkdir()
    shutil.copy(WEIGHTS, weights)
    prior, lines, report = mine(tmp_path, weights, "prior", caplog)
    assert lines == ["errors: no error model beside the weights (best.errors.json): the prior (P(false positive) = "
                     "1 - confidence, misses = the score mass under the threshold)"]
    assert report.startswith("the prior")

    model = fit_error_model(synthetic_examples(300, 0, classes=(0, 1, 2)), list(NAMES), 0.25, 100, 0.01, "a test")
    (tmp_path / "model" / "best.errors.json").write_text(json.dumps(model.to_dict()))
    fitted, lines, report = mine(tmp_path, weights, "fitted", caplog)
    assert len(lines) == 1 and lines[0].startswith(f"errors: error model {tmp_path / 'model' / 'best.errors.json'}, "
                                                   "fitted on 300 images of a test")
    assert report.startswith(f"{tmp_path / 'model' / 'best.errors.json'}: fitted on 300 images")
    assert set(fitted) == set(prior) and fitted != prior

    again, lines, report = mine(tmp_path, weights, "forced-prior", caplog, errors_prior=True)
    assert again == prior and report.startswith("the prior")


def test_a_broken_error_model_stops_mining_before_any_image(tmp_path, caplog):
    weights = tmp_path / "best.pt"
    shutil.copy(WEIGHTS, weights)
    (tmp_path / "best.errors.json").write_text('{"format": "something else"}')
    with pytest.raises(ModelError, match="best.errors.json: not a usable error model"):
        mine(tmp_path, weights, "broken", caplog)
    assert not (tmp_path / "broken" / "result.tsv").exists()


def test_an_error_model_fitted_at_another_size_is_warned_of(tmp_path, caplog):
    caplog.set_level("INFO", "executor")
    weights = tmp_path / "best.pt"
    shutil.copy(WEIGHTS, weights)
    model = fit_error_model(synthetic_examples(300, 1, classes=(0, 1, 2)), list(NAMES), 0.25, 100, 0.01, "a test")
    model.fitted_on["img_size"] = 320
    (tmp_path / "best.errors.json").write_text(json.dumps(model.to_dict()))
    mine(tmp_path, weights, "other-size", caplog)
    assert any(r.levelname == "WARNING" and "fitted at img_size 320, mining runs at 160" in r.getMessage()
               for r in caplog.records)
    caplog.clear()
    mine(tmp_path, weights, "same-size", caplog, img_size=320)
    assert not [r for r in caplog.records if r.levelname == "WARNING" and "img_size" in r.getMessage()]
