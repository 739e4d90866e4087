"""executor.pipeline.tasks.run driven end to end in this process with the fake detector
(tests/pipeline/fake_detector.py): mining and infer in one pass, shards reused only under the same settings, a
model that fails to load. The same through start.py with the real model: tests/test_platform.py; several
worker processes: tests/test_workers.py."""
import json

import pytest

from executor.errors import ModelError, error_code
from executor.pipeline import tasks
from executor.pipeline.job import Job
from executor.pipeline.passes import Models
from executor.pipeline.plan import make_plan
from tests.pipeline.fake_detector import PixelDetector, fake_models
from tests.platform import WEIGHTS, coco_images, coco_names

IMAGES = [str(p) for p in coco_images(12)]


def config(**extra):
    return {"model_params_path": [str(WEIGHTS)], "class_names": coco_names(), "img_size": 160, **extra}


def read(path):
    return path.read_text() if path.exists() else None


@pytest.mark.parametrize("algorithm", ["entropy", "aldd", "cald"])
def test_mining_and_infer_share_one_pass_and_match_separate_runs(tmp_path, caplog, algorithm):
    caplog.set_level("INFO", "executor")
    outputs, loads = {}, {}
    for name, run in (("both", ["mining", "infer"]), ("mining", ["mining"]), ("infer", ["infer"])):
        out = tmp_path / name
        job = Job(candidates=IMAGES, mining_result=str(out / "result.tsv"), infer_result=str(out / "infer.json"),
                  work_dir=str(out))
        models = fake_models()
        caplog.clear()
        results = tasks.run(make_plan(run, job, config(mining_algorithm=algorithm, report=False)), models=models)
        assert {task: result.path for task, result in results.items()} == {
            task: str(out / ("result.tsv" if task == "mining" else "infer.json")) for task in run}
        outputs[name] = read(out / "result.tsv"), read(out / "infer.json")
        loads[name] = list(models.loaded)
        if name == "both":  # one pass over the images: one throughput line for both tasks, one model loaded
            ends = [r.getMessage() for r in caplog.records if r.name == "executor.pipeline.tasks"]
            assert len(ends) == 1 and ends[0].startswith(f"mining + infer of {len(IMAGES)} images in "), ends
    assert loads == {name: [str(WEIGHTS)] for name in outputs}
    assert outputs["both"] == (outputs["mining"][0], outputs["infer"][1])
    rows = [line.split("\t") for line in outputs["both"][0].splitlines()]
    assert sorted(key for key, _ in rows) == sorted(IMAGES)
    assert [float(s) for _, s in rows] == sorted((float(s) for _, s in rows), reverse=True)
    detection = json.loads(outputs["both"][1])["detection"]
    assert list(detection) == [path.rsplit("/", 1)[1] for path in IMAGES]  # index order
    assert any(entry["boxes"] for entry in detection.values())


def test_shards_are_reused_only_under_the_same_parameters(tmp_path, monkeypatch, caplog):
    """A run stopped after scoring (before the merge) leaves every shard; a rerun with another seed scores them all
    again and ranks differently, one with the same seed reuses them and writes what an uninterrupted run wrote."""
    shards = tmp_path / "shards"

    def run(name, seed, stop_before_merge=False):
        job = Job(candidates=IMAGES, mining_result=str(tmp_path / name), shards_dir=str(shards))
        settings = config(mining_algorithm="cald", seed=seed, shard_size=2, report=False)
        if not stop_before_merge:
            return tasks.run(make_plan(["mining"], job, settings), models=fake_models())
        with monkeypatch.context() as patch:
            patch.setattr(tasks, "write_mining", lambda *a, **k: (_ for _ in ()).throw(SystemExit(3)))
            with pytest.raises(SystemExit):
                tasks.run(make_plan(["mining"], job, settings), models=fake_models())
        assert len(list(shards.glob("mining-*.txt"))) == 6 and not (tmp_path / name).exists()

    caplog.set_level("INFO", "executor")
    run("first.tsv", seed=1)
    assert not shards.exists()  # removed after the merge
    run("other.tsv", seed=1, stop_before_merge=True)
    caplog.clear()
    run("other.tsv", seed=2)
    assert "complete from an earlier run" not in caplog.text
    assert (tmp_path / "other.tsv").read_text() != (tmp_path / "first.tsv").read_text()
    run("same.tsv", seed=1, stop_before_merge=True)
    caplog.clear()
    run("same.tsv", seed=1)
    assert "6 of 6 shards are complete from an earlier run" in caplog.text
    assert (tmp_path / "same.tsv").read_text() == (tmp_path / "first.tsv").read_text()


def test_a_model_that_fails_to_load_fails_the_task_and_leaves_nothing(tmp_path):
    def broken(weights, *args, **kwargs):
        raise ModelError(f"injected: cannot load weights {weights}")

    job = Job(candidates=IMAGES, mining_result=str(tmp_path / "result.tsv"), work_dir=str(tmp_path))
    with pytest.raises(ModelError, match="injected: cannot load weights") as err:
        tasks.run(make_plan(["mining", "infer"], job, config()), models=Models(load=broken))
    assert error_code(err.value) == 300004
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no result, no shard folder


def test_a_detector_failing_mid_run_keeps_the_finished_shards_for_a_rerun(tmp_path, caplog):
    class FailsOnThirdBatch(PixelDetector):
        def head(self, canvases, features=False):
            if self.forwards >= 4:
                raise RuntimeError("injected: the device went away")
            return super().head(canvases, features)

    def load(weights, backend, gpu_id, img_size, **post):
        return FailsOnThirdBatch(weights, img_size, post["class_names"],
                                 **{k: post[k] for k in ("conf_thres", "iou_thres", "max_det")})

    job = Job(candidates=IMAGES, mining_result=str(tmp_path / "result.tsv"), work_dir=str(tmp_path))
    settings = config(mining_algorithm="entropy", shard_size=2, batch_size_per_gpu=2, report=False)
    with pytest.raises(RuntimeError, match="device went away"):
        tasks.run(make_plan(["mining"], job, settings), models=Models(load=load))
    assert len(list((tmp_path / "shards").glob("mining-*.txt"))) == 2 and not (tmp_path / "result.tsv").exists()
    caplog.set_level("INFO", "executor")
    tasks.run(make_plan(["mining"], job, settings), models=fake_models())
    assert "2 of 6 shards are complete from an earlier run with the same settings; scoring the other 4" in caplog.text
    assert "8 scored in this run, 4 reused from an earlier run's shards" in caplog.text
    assert len((tmp_path / "result.tsv").read_text().splitlines()) == len(IMAGES)
