"""The quality benchmark's own metric (benchmarks/quality.py, benchmarks/gt.py) on hand-made examples:
the benchmark trusts these numbers, so they are checked against values worked out by hand."""
import hashlib
import json
import os
from collections import Counter

import numpy as np
import pytest
import yaml

from benchmarks import gt, quality
from tests.platform import SHARED, coco_names


def test_capture_at_image_budget():
    errors = np.array([5, 0, 3, 2, 0, 0, 0, 0, 0, 0])  # 10 errors, 10 images -> top 2 images
    scores = np.array([0.9, 0.8, 0.1, 0.7, 0.0, 0.2, 0.3, 0.4, 0.5, 0.6])
    assert quality.capture_images(scores, errors) == pytest.approx(0.5)            # images 0, 1
    assert quality.capture_images(errors, errors) == pytest.approx(0.8)            # oracle: 5 + 3


def test_capture_at_image_budget_reverse_order_worked_out():
    errors = np.array([5, 0, 3, 2, 0, 0, 0, 0, 0, 0])
    scores = -np.array([0.9, 0.8, 0.1, 0.7, 0.0, 0.2, 0.3, 0.4, 0.5, 0.6])
    # top 2 of the negated scores: image 4 (-0.0) then image 2 (-0.1): 0 + 3 = 3 of 10
    assert quality.capture_images(scores, errors) == pytest.approx(0.3)


def test_capture_ties_are_broken_at_random():
    # 5 images, all tied, 1 of them holds all 4 errors: top round(0.2*5)=1 image holds it 1 time in 5
    errors = np.array([4, 0, 0, 0, 0])
    value = quality.capture_images(np.zeros(5), errors, draws=4000)
    assert value == pytest.approx(0.2, abs=0.03)
    # a strictly better score is never tied with the rest
    assert quality.capture_images(np.array([1, 0, 0, 0, 0]), errors) == 1.0


def test_capture_at_object_budget():
    objects = np.array([10, 2, 3, 0, 5])     # 20 objects -> budget 4
    errors = np.array([6, 2, 1, 1, 0])       # 10 errors
    # order 1, 3, 2, 0, 4: image 1 (2 objects, spent 0 < 4), image 3 (0 objects, spent 2), image 2
    # (3 objects, spent 2 < 4: crosses the budget, taken), then image 0 starts at 5 >= 4: stop
    scores = np.array([0.2, 0.9, 0.5, 0.6, 0.1])
    assert quality.capture_objects(scores, errors, objects) == pytest.approx((2 + 1 + 1) / 10)
    # a crowded image first eats the whole budget at once
    assert quality.capture_objects(objects, errors, objects) == pytest.approx(6 / 10)


def test_spearman_against_error_rate():
    errors = np.array([0, 1, 4, 3])
    objects = np.array([0, 1, 2, 6])       # rates 0, 1, 2, 0.5
    assert quality.spearman(np.array([0, 2, 3, 1]), errors, objects) == pytest.approx(1.0)
    assert quality.spearman(-np.array([0, 2, 3, 1]), errors, objects) == pytest.approx(-1.0)
    assert np.isnan(quality.spearman(np.ones(4), errors, objects))


def test_random_baseline_is_near_the_budget():
    rng = np.random.default_rng(0)
    n = 400
    errors, objects = rng.integers(0, 6, n), rng.integers(0, 10, n)
    keys = [f"img{i}.jpg" for i in range(n)]
    base = quality.random_baseline(keys, errors, objects)
    assert base["q1"] == pytest.approx(0.2, abs=0.05)
    assert abs(base["q3"]) < 0.1


def test_coco_loader_maps_by_name_and_keeps_crowds_apart(tmp_path):
    (tmp_path / "images").mkdir()
    data = {"images": [{"id": 7, "file_name": "b.jpg", "width": 100, "height": 80},
                       {"id": 3, "file_name": "a.jpg", "width": 100, "height": 80}],
            "categories": [{"id": 1, "name": "person"}, {"id": 90, "name": "toothbrush"}],
            "annotations": [{"id": 1, "image_id": 7, "category_id": 90, "bbox": [1, 2, 10, 20], "iscrowd": 0},
                            {"id": 2, "image_id": 7, "category_id": 1, "bbox": [0, 0, 50, 50], "iscrowd": 1}]}
    (tmp_path / "annotations.json").write_text(json.dumps(data))
    ds = gt.load_coco(str(tmp_path), ["toothbrush", "cat", "person"])
    assert [i.path.rsplit("/", 1)[1] for i in ds.images] == ["a.jpg", "b.jpg"]
    b = ds.images[1]
    assert b.boxes.tolist() == [[1, 2, 11, 22]] and b.cls.tolist() == [0]
    assert b.ignore_boxes.tolist() == [[0, 0, 50, 50]] and b.ignore_cls.tolist() == [2] and b.crowd
    assert ds.images[0].objects == 0 and ds.classes == {0, 2}


def test_voc_loader_renames_and_ignores_difficult(tmp_path):
    (tmp_path / "JPEGImages").mkdir()
    (tmp_path / "Annotations").mkdir()
    (tmp_path / "JPEGImages" / "x.jpg").write_bytes(b"")
    (tmp_path / "coco_names.txt").write_text("sofa\tcouch\nperson\tperson\n")
    obj = "<object><name>{}</name><difficult>{}</difficult><bndbox><xmin>{}</xmin><ymin>1</ymin>" \
          "<xmax>10</xmax><ymax>10</ymax></bndbox></object>"
    (tmp_path / "Annotations" / "x.xml").write_text(
        "<annotation>" + obj.format("sofa", 0, 1) + obj.format("person", 1, 5) + "</annotation>")
    ds = gt.load_voc(str(tmp_path), ["person", "couch", "dog"])
    x = ds.images[0]
    assert x.boxes.tolist() == [[0, 0, 10, 10]] and x.cls.tolist() == [1]   # 1-based inclusive -> edges
    assert x.ignore_boxes.tolist() == [[4, 0, 10, 10]] and x.ignore_cls.tolist() == [0] and not x.crowd
    assert ds.classes == {0, 1}


def _jpeg(path, width, height):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height)).save(path)


def test_yolo_loader_maps_class_ids_through_coco_names(tmp_path):
    _jpeg(tmp_path / "valid" / "images" / "a.jpg", 200, 100)
    _jpeg(tmp_path / "test" / "images" / "b.jpg", 50, 50)   # no label file: a negative image
    (tmp_path / "valid" / "labels").mkdir()
    (tmp_path / "valid" / "labels" / "a.txt").write_text("2 0.5 0.5 0.2 0.4\n0 0.25 0.5 0.1 0.2\n")
    (tmp_path / "coco_names.txt").write_text("0\tbus\n2\tmotorcycle\n")
    ds = gt.load_yolo(str(tmp_path), ["person", "motorcycle", "bus"], name="tiny")
    by_name = {i.path.rsplit("/", 1)[1]: i for i in ds.images}
    a = by_name["a.jpg"]
    assert a.cls.tolist() == [1, 2] and a.boxes.tolist() == [[80, 30, 120, 70], [40, 40, 60, 60]]
    assert by_name["b.jpg"].objects == 0 and ds.classes == {1, 2} and ds.name == "tiny"
    (tmp_path / "valid" / "labels" / "a.txt").write_text("1 0.5 0.5 0.2 0.4\n")
    with pytest.raises(ValueError, match="not in coco_names.txt"):
        gt.load_yolo(str(tmp_path), ["person", "motorcycle", "bus"])


def test_fixed_draw_ignores_input_order_and_nests():
    paths = [f"valid/images/{i}.jpg" for i in range(50)]
    draw = gt.fixed_draw(paths, 20)
    assert len(set(draw)) == 20 and gt.fixed_draw(paths[::-1], 20) == draw
    assert gt.fixed_draw(paths, 5) == draw[:5]   # --images takes the start of the same draw


HIGHWAY = str(SHARED / "data" / "highway")


def _relative(dataset) -> list[str]:
    return [os.path.relpath(p, HIGHWAY) for p in dataset.paths]


@pytest.mark.skipif(not os.path.isfile(os.path.join(HIGHWAY, "coco_names.txt")), reason="no shared highway data")
def test_highway_quality_set_is_the_same_300_images_with_coco_classes():
    names = coco_names()
    ds = gt.load_yolo(HIGHWAY, names)
    relative = _relative(ds)
    assert len(set(relative)) == 300 and relative == _relative(gt.load_yolo(HIGHWAY, names))
    # pinned: a change of the draw, or of the files it draws from, changes every highway figure
    assert hashlib.sha256("\n".join(relative).encode()).hexdigest()[:16] == "9aa23330e81bc3fb"
    assert Counter(r.split("/")[0] for r in relative) == {"valid": 199, "test": 101}
    # the data's own names (data.yaml: motorbike) become the COCO model's, box for box
    with open(os.path.join(HIGHWAY, "data.yaml"), encoding="utf-8") as handle:
        own = {i: {"motorbike": "motorcycle"}.get(n, n) for i, n in yaml.safe_load(handle)["names"].items()}
    for image in ds.images:
        label = image.path.replace("/images/", "/labels/").rsplit(".", 1)[0] + ".txt"
        with open(label, encoding="utf-8") as handle:
            expected = [own[int(line.split()[0])] for line in handle if line.strip()]
        assert [names[c] for c in image.cls] == expected
    assert Counter(names[c] for i in ds.images for c in i.cls) == {
        "truck": 214, "car": 185, "bus": 125, "person": 48, "motorcycle": 33}


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["entropy", "errors", "aldd", "cald"])
def test_timed_mining_scores_what_ships(algorithm, tmp_path):
    """The speed benchmark's instrumented run (whose scores feed the quality table) must score exactly as
    executor.pipeline.tasks.mine does on its own, e.g. entropy through its copy of the detector with looser NMS."""
    from benchmarks import speed
    from executor.pipeline.job import Job
    from executor.pipeline.passes import Models
    from executor.pipeline.plan import make_plan
    from executor.pipeline.tasks import mine
    from executor.protocol.settings import build_settings
    from mining import SCORERS
    from tests.platform import WEIGHTS, coco_images

    keys = [str(p) for p in coco_images(3)]
    config = speed.mining_config(str(WEIGHTS), algorithm, img_size=320)
    job = Job(candidates=keys, work_dir=str(tmp_path), mining_result=str(tmp_path / "result.tsv"))
    mine(make_plan(["mining"], job, config), lambda f: None, Models())  # loads the model itself
    shipped = speed.mined_scores(job)
    detector = Models().detector(build_settings("mining", config), str(WEIGHTS))
    net = detector.net
    timed = speed.mine_timed(keys, detector, config)
    np.testing.assert_allclose(timed["scores"], shipped, rtol=1e-6)
    stages = timed["breakdown"]
    assert stages["network"] > 0 and stages["forward_passes"] > 0
    assert all(seconds >= 0 for name, seconds in stages.items() if name != "forward_passes")  # nested timers
    assert (stages["cald_views"] > 0) == (algorithm == "cald")
    # timed, then restored
    assert detector.net is net and "predict_canvases" not in vars(type(detector))
    assert "score" not in vars(SCORERS[algorithm])


def test_a_regenerated_benchmark_page_keeps_the_other_devices_run():
    """benchmarks/results/ is not tracked: a CPU run must not drop the GPU run's section from docs/benchmarks.md."""
    from benchmarks.__main__ import keep_other_runs

    old = ("# B\n\n## Run of 2026-11-01 on cpu\nold cpu\n\n## Run of 2026-11-02 on cuda:0\ngpu table\n\n"
           "## Findings\nf\n")
    new = "# B\n\n## Run of 2026-12-01 on cpu\nnew cpu\n\n## Findings\nf\n"
    merged = keep_other_runs(old, new)
    assert merged == ("# B\n\n## Run of 2026-12-01 on cpu\nnew cpu\n\n## Run of 2026-11-02 on cuda:0\ngpu table\n\n"
                      "## Findings\nf\n")
    assert keep_other_runs(merged, new) == merged and keep_other_runs(new, new) == new


def test_the_report_leads_with_q2():
    """Q2 (object budget) is the first quality column and the first condition of every quality target."""
    from benchmarks import report

    def row(q1, q2, q3):
        return {"q1": q1, "q2": q2, "q3": q3}

    q = {"rows": {"random": {**row(0.2, 0.2, 0.0), "q1_std": 0.01, "q2_std": 0.02, "q3_std": 0.03},
                  "detections": row(0.41, 0.19, 0.1), "entropy": row(0.45, 0.25, 0.35)}, "variants": {}}
    s = report.summarise({"quality": {"highway": q}})
    assert s["targets"] == {"highway: entropy beats random on Q2, Q1, Q3": True,
                            "highway: an algorithm beats detections on Q2, Q1 with Q3 >= 0.3": True}
    assert report.quality_rows(q)[0] == ["random (mean of 10 seeds)", "0.200 ± 0.020", "0.200 ± 0.010", "0.000 ± 0.030"]
    assert report.quality_rows(q)[2] == ["entropy", "0.250", "0.450", "0.350"]
