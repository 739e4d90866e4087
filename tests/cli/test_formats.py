"""Pre-labels for labelling tools (executor/cli/formats.py): class ids are the model's, whatever a batch found, and
an unreadable image is told apart from one with nothing in it."""
import json

import pytest

from executor.cli.formats import write_detections
from executor.protocol.writers import box_record, write_infer_result
from tests.platform import coco_images

MODEL = ["person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
         "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog"]


def batch(tmp_path, name: str, found: dict) -> tuple[str, dict]:
    """An infer result as the CLI's rewrite reads it (null: unreadable) and the image path of each name."""
    raw = tmp_path / f"{name}.json"
    write_infer_result(str(raw), found, "boxes")
    images = coco_images(len(found))
    return str(raw), {key: str(images[i]) for i, key in enumerate(found)}


@pytest.fixture
def two_batches(tmp_path):
    """Batch 1 found dogs and a person; batch 2 only a car: alphabetical numbering of what a batch found would
    give `dog` id 0 in one and `car` id 0 in the other."""
    dog = box_record([10, 20, 110, 220], "dog", 0.9)
    person = box_record([0, 0, 50, 100], "person", 0.8)
    car = box_record([5, 5, 25, 15], "car", 0.7)
    return (batch(tmp_path, "one", {"a/x.jpg": [dog, person], "a/empty.jpg": [], "a/broken.jpg": None}),
            batch(tmp_path, "two", {"b/y.jpg": [car]}))


def test_yolo_labels_use_the_model_class_index_in_every_batch(tmp_path, two_batches):
    (raw1, paths1), (raw2, paths2) = two_batches
    write_detections(raw1, str(tmp_path / "l1"), "yolo", paths1, MODEL)
    write_detections(raw2, str(tmp_path / "l2"), "yolo", paths2, MODEL)
    for labels in ("l1", "l2"):
        assert (tmp_path / labels / "classes.txt").read_text().splitlines() == MODEL  # all, in model order
    assert [line.split()[0] for line in (tmp_path / "l1/a/x.txt").read_text().splitlines()] == ["16", "0"]
    assert [line.split()[0] for line in (tmp_path / "l2/b/y.txt").read_text().splitlines()] == ["2"]
    assert (tmp_path / "l1/a/empty.txt").read_text() == ""  # read, nothing there
    assert not (tmp_path / "l1/a/broken.txt").exists()      # unreadable: not labelled at all


def test_coco_categories_are_the_model_classes_from_1(tmp_path, two_batches):
    (raw1, paths1), (raw2, paths2) = two_batches
    write_detections(raw1, str(tmp_path / "one.coco.json"), "coco", paths1, MODEL)
    write_detections(raw2, str(tmp_path / "two.coco.json"), "coco", paths2, MODEL)
    one, two = (json.loads((tmp_path / f"{n}.coco.json").read_text()) for n in ("one", "two"))
    expected = [{"id": i, "name": name, "supercategory": ""} for i, name in enumerate(MODEL, 1)]
    assert one["categories"] == two["categories"] == expected
    assert [a["category_id"] for a in one["annotations"]] == [17, 1]
    assert [a["category_id"] for a in two["annotations"]] == [3]
    sizes = {im["file_name"]: (im["width"], im["height"]) for im in one["images"]}
    assert sizes["a/broken.jpg"] == (0, 0) and sizes["a/x.jpg"][0] > 0 and len(one["images"]) == 3


def test_label_files_stay_in_the_label_folder(tmp_path):
    from executor.cli.formats import label_path

    assert label_path(str(tmp_path), "a/x.jpg") == str(tmp_path / "a" / "x.txt")
    # a list of images outside its folder names them by absolute path: mirrored under the folder
    assert label_path(str(tmp_path), "/data/pool/x.jpg") == str(tmp_path / "data" / "pool" / "x.txt")
    with pytest.raises(ValueError, match="climbs out"):
        label_path(str(tmp_path), "../x.jpg")
