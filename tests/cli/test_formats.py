"""Pre-labels for labelling tools (executor/cli/formats.py), from an infer pass's detections: class ids are the
model's, whatever a batch found, and an unreadable image is told apart from one with nothing in it."""
import json

import pytest

from executor.cli.formats import write_detections
from executor.pipeline.shards import Detected
from executor.protocol.writers import box_record

MODEL = ["person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
         "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog"]


@pytest.fixture
def two_batches():
    """Batch 1 found dogs and a person; batch 2 only a car: alphabetical numbering of what a batch found would
    give `dog` id 0 in one and `car` id 0 in the other."""
    dog = box_record([10, 20, 110, 220], "dog", 0.9)
    person = box_record([0, 0, 50, 100], "person", 0.8)
    car = box_record([5, 5, 25, 15], "car", 0.7)
    return ([Detected("a/x.jpg", [dog, person], 640, 480), Detected("a/empty.jpg", [], 500, 375),
             Detected("a/broken.jpg", None, 0, 0, "not a decodable image")],
            [Detected("b/y.jpg", [car], 200, 100)])


def test_yolo_labels_use_the_model_class_index_in_every_batch(tmp_path, two_batches):
    one, two = two_batches
    write_detections(one, str(tmp_path / "l1"), "yolo", MODEL)
    write_detections(two, str(tmp_path / "l2"), "yolo", MODEL)
    for labels in ("l1", "l2"):
        assert (tmp_path / labels / "classes.txt").read_text().splitlines() == MODEL  # all, in model order
    assert (tmp_path / "l1/a/x.txt").read_text().splitlines() == ["16 0.093750 0.250000 0.156250 0.416667",
                                                                  "0 0.039062 0.104167 0.078125 0.208333"]
    assert (tmp_path / "l2/b/y.txt").read_text().splitlines() == ["2 0.075000 0.100000 0.100000 0.100000"]
    assert (tmp_path / "l1/a/empty.txt").read_text() == ""  # read, nothing there
    assert not (tmp_path / "l1/a/broken.txt").exists()      # unreadable: not labelled at all


def test_coco_categories_are_the_model_classes_from_1(tmp_path, two_batches):
    one, two = two_batches
    write_detections(one, str(tmp_path / "one.coco.json"), "coco", MODEL)
    write_detections(two, str(tmp_path / "two.coco.json"), "coco", MODEL)
    one, two = (json.loads((tmp_path / f"{n}.coco.json").read_text()) for n in ("one", "two"))
    expected = [{"id": i, "name": name, "supercategory": ""} for i, name in enumerate(MODEL, 1)]
    assert one["categories"] == two["categories"] == expected
    assert [a["category_id"] for a in one["annotations"]] == [17, 1]
    assert [a["category_id"] for a in two["annotations"]] == [3]
    assert one["annotations"][0] == {"id": 1, "image_id": 1, "category_id": 17, "bbox": [10, 20, 100, 200],
                                     "area": 20000, "iscrowd": 0, "score": 0.9}
    sizes = {im["file_name"]: (im["width"], im["height"]) for im in one["images"]}
    assert sizes == {"a/x.jpg": (640, 480), "a/empty.jpg": (500, 375), "a/broken.jpg": (0, 0)}


def test_label_files_stay_in_the_label_folder(tmp_path):
    from executor.cli.formats import label_path

    assert label_path(str(tmp_path), "a/x.jpg") == str(tmp_path / "a" / "x.txt")
    # a list of images outside its folder names them by absolute path: mirrored under the folder
    assert label_path(str(tmp_path), "/data/pool/x.jpg") == str(tmp_path / "data" / "pool" / "x.txt")
    with pytest.raises(ValueError, match="climbs out"):
        label_path(str(tmp_path), "../x.jpg")
