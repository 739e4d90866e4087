"""Label Studio tasks with predictions (executor/cli/labelstudio.py, infer/mine --format labelstudio), checked with a
hand-written validator of Label Studio's documented import format (tests/cli/labelstudio_import.py)."""
import copy
import json

import numpy as np
import pytest

from executor.cli.labelstudio import config_path, write_labelstudio
from executor.pipeline.shards import Detected
from executor.protocol.writers import box_record
from tests.cli.labelstudio_import import problems
from tests.platform import WEIGHTS, image_folder, run_cli

MODEL = ["person", "bicycle", "car", "dog", 'say "cheese" & <smile>']


@pytest.fixture
def found():
    dog = box_record([10, 20, 110, 220], "dog", 0.9)
    person = box_record([0, 0, 50, 100], "person", 0.7)
    return [Detected("a/x.jpg", [dog, person], 640, 480), Detected("a/empty one.jpg", [], 500, 375),
            Detected("a/broken.jpg", None, 0, 0, "not a decodable image")]


def written(path):
    return json.loads(path.read_text()), config_path(str(path))


def test_tasks_hold_percent_boxes_and_validate_against_their_config(tmp_path, found):
    paths = {"a/x.jpg": "/pool/a/x.jpg", "a/empty one.jpg": "/pool/a/empty one.jpg", "a/broken.jpg": "/pool/a/b.jpg"}
    target = tmp_path / "tasks.json"
    assert write_labelstudio(found, str(target), MODEL, paths=paths, model_version="best.pt") == 2
    tasks, config = written(target)
    xml = open(config).read()
    assert problems(tasks, xml) == []
    assert xml.startswith('<View>\n  <Image name="image" value="$image"/>\n  <RectangleLabels name="label" '
                          'toName="image">\n    <Label value="person"/>')  # every class, in model order
    assert '<Label value="say &quot;cheese&quot; &amp; &lt;smile&gt;"/>' in xml
    # index order, the unreadable image left out; Label Studio's local-files URL under the filesystem root
    assert [t["data"] for t in tasks] == [{"image": "/data/local-files/?d=pool/a/x.jpg"},
                                          {"image": "/data/local-files/?d=pool/a/empty%20one.jpg"}]
    prediction = tasks[0]["predictions"][0]
    assert prediction["model_version"] == "best.pt" and prediction["score"] == pytest.approx(0.8)
    assert prediction["result"][0] == {
        "from_name": "label", "to_name": "image", "type": "rectanglelabels", "original_width": 640,
        "original_height": 480, "image_rotation": 0, "score": 0.9,
        "value": {"x": 1.5625, "y": 4.1667, "width": 15.625, "height": 41.6667, "rotation": 0,
                  "rectanglelabels": ["dog"]}}
    assert tasks[1]["predictions"] == [{"model_version": "best.pt", "score": 0.0, "result": []}]


def test_mining_rank_orders_the_tasks_and_a_url_prefix_serves_a_folder(tmp_path, found):
    paths = {key.key: f"/srv/pool/{key.key}" for key in found}
    target = tmp_path / "tasks.json"
    ranking = {"a/x.jpg": (2, 0.25), "a/empty one.jpg": (1, 0.75), "a/broken.jpg": (3, -1.0)}
    write_labelstudio(found, str(target), MODEL, paths=paths, model_version="m", ranking=ranking,
                      url_prefix="http://files:8081/", document_root="/srv/pool")
    tasks, config = written(target)
    assert problems(tasks, open(config).read()) == []
    assert [t["data"] for t in tasks] == [
        {"image": "http://files:8081/a/empty%20one.jpg", "mining_rank": 1, "mining_score": 0.75},
        {"image": "http://files:8081/a/x.jpg", "mining_rank": 2, "mining_score": 0.25}]
    with pytest.raises(ValueError, match="outside the document root /elsewhere"):
        write_labelstudio(found, str(target), MODEL, paths=paths, model_version="m", document_root="/elsewhere")


def test_segmentation_masks_become_polygons_in_percent(tmp_path):
    from pycocotools import mask as mask_utils

    from executor.protocol.writers import instance_record

    mask = np.zeros((100, 200), np.uint8)
    mask[10:30, 50:150] = 1  # rows 10-29, columns 50-149
    rle = mask_utils.encode(np.asfortranarray(mask))
    rle = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
    record = {"height": 100, "width": 200, "instances": [instance_record([50, 10, 150, 30], "car", 0.6, rle)]}
    target = tmp_path / "tasks.json"
    write_labelstudio([Detected("x.jpg", record, 200, 100)], str(target), MODEL, paths={"x.jpg": "/x.jpg"},
                      model_version="seg.pt", polygons=True)
    tasks, config = written(target)
    xml = open(config).read()
    assert '<PolygonLabels name="label" toName="image">' in xml and problems(tasks, xml) == []
    region = tasks[0]["predictions"][0]["result"][0]
    assert region["type"] == "polygonlabels" and region["value"]["polygonlabels"] == ["car"]
    points = np.array(region["value"]["points"])  # the outline's pixel corners, in percent
    assert sorted(map(tuple, points.tolist())) == [(25.0, 10.0), (25.0, 29.0), (74.5, 10.0), (74.5, 29.0)]


def test_the_validator_finds_what_label_studio_would_reject(tmp_path, found):
    target = tmp_path / "tasks.json"
    write_labelstudio(found, str(target), MODEL, paths={f.key: "/" + f.key for f in found}, model_version="m")
    tasks, config = written(target)
    xml = open(config).read()
    breaks = {
        "data.image (read by the config) is missing": lambda t: t[0]["data"].pop("image"),
        "is not a non-empty list of the control's labels":
            lambda t: t[0]["predictions"][0]["result"][0]["value"].update(rectanglelabels=["zebra"]),
        "is not inside the image": lambda t: t[0]["predictions"][0]["result"][0]["value"].update(x=95.0),
        "from_name 'labels' is no control tag": lambda t: t[0]["predictions"][0]["result"][0].update(
            from_name="labels"),
        "original_width 0 is not a positive integer": lambda t: t[0]["predictions"][0]["result"][0].update(
            original_width=0),
    }
    for message, damage in breaks.items():
        broken = copy.deepcopy(tasks)
        damage(broken)
        assert any(message in problem for problem in problems(broken, xml)), message
    assert problems(tasks, xml.replace('toName="image"', 'toName="picture"'))[0].startswith("config:")


def test_cli_infer_and_mine_write_tasks_in_ranking_order(capsys, fake_detector, tmp_path):
    pool = tmp_path / "pool"
    image_folder(pool / "sub", 4)
    tasks_file, ranked = tmp_path / "tasks.json", tmp_path / "ranked.tsv"
    status, err = run_cli(capsys, "mine", "--model", WEIGHTS, "--source", pool, "--imgsz", 160, "--topk", 2,
                          "--infer-out", tasks_file, "--format", "labelstudio", "--ls-document-root", tmp_path,
                          "--out", ranked)
    assert status == 0, err
    tasks, config = written(tasks_file)
    assert problems(tasks, open(config).read()) == []
    rows = [line.split("\t") for line in ranked.read_text().splitlines()]
    assert [t["data"] for t in tasks] == [
        {"image": f"/data/local-files/?d=pool/{path.split('/pool/')[1]}", "mining_rank": rank,
         "mining_score": float(score)} for rank, (path, score) in enumerate(rows, 1)]
    assert (tmp_path / "ranked.top2.txt").read_text().split() == [path for path, _ in rows[:2]]  # still the top 2
    assert sum(len(t["predictions"][0]["result"]) for t in tasks) > 0
    # infer alone: index order, no mining fields
    status, err = run_cli(capsys, "infer", "--model", WEIGHTS, "--source", pool, "--imgsz", 160, "--format",
                          "labelstudio", "--ls-url-prefix", "http://h/", "--ls-document-root", pool,
                          "--out", tmp_path / "infer.json")
    assert status == 0, err
    tasks, _ = written(tmp_path / "infer.json")
    assert [t["data"] for t in tasks] == [{"image": f"http://h/sub/{p.name}"} for p in sorted((pool / "sub").iterdir())]


def test_cli_label_studio_flags_are_checked_first(capsys, tmp_path):
    pool = image_folder(tmp_path / "pool", 1)
    image = next(pool.iterdir())
    out = tmp_path / "tasks.json"
    status, err = run_cli(capsys, "infer", "--model", WEIGHTS, "--source", pool, "--ls-url-prefix", "http://h/",
                          "--out", out)
    assert status == 2 and "--ls-url-prefix needs --format labelstudio" in err
    (tmp_path / "other").mkdir()
    status, err = run_cli(capsys, "infer", "--model", WEIGHTS, "--source", pool, "--format", "labelstudio",
                          "--ls-document-root", tmp_path / "other", "--out", out)
    assert status == 2 and f"image {image} lies outside it" in err
    assert not out.exists()


@pytest.mark.slow
def test_cli_segmentation_model_writes_polygons(capsys, tmp_path, seg_weights):
    pool = image_folder(tmp_path / "pool", 2)
    out = tmp_path / "tasks.json"
    status, err = run_cli(capsys, "infer", "--model", seg_weights, "--source", pool, "--imgsz", 320, "--format",
                          "labelstudio", "--out", out)
    assert status == 0, err
    tasks, config = written(out)
    xml = open(config).read()
    assert "<PolygonLabels" in xml and problems(tasks, xml) == []
    regions = [r for t in tasks for r in t["predictions"][0]["result"]]
    assert regions and all(r["type"] == "polygonlabels" for r in regions)
