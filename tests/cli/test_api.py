"""The Python API (executor/api.py): the command line's names, class ids, unreadable images told apart."""
import shutil

import pytest

from executor.cli import api
from tests.platform import WEIGHTS, coco_images, coco_names


def test_the_command_line_names_are_config_keys():
    config = api._config(None, {"imgsz": 320, "conf": 0.3, "iou": 0.5, "batch": 4, "device": "cuda:0",
                                "workers": 2, "threads": 1, "nproc": 2, "seed": 7, "backend": "torch",
                                "model": "w.pt", "max_det": 10})
    assert config.pop("model_params_path")[0].endswith("/w.pt")
    assert config == {"img_size": 320, "conf_thres": 0.3, "iou_thres": 0.5, "batch_size_per_gpu": 4, "gpu_id": "0",
                      "num_workers_per_gpu": 2, "cpu_threads": 1, "cpu_processes": 2, "seed": 7, "backend": "torch",
                      "max_det": 10}
    assert api._config(None, {"device": "cpu"}) == {"gpu_id": ""}
    with pytest.raises(TypeError, match="imgsz= and img_size= both set img_size"):
        api._config(None, {"imgsz": 320, "img_size": 640})
    with pytest.raises(TypeError, match="weights and model="):
        api._config("a.pt", {"model": "b.pt"})


@pytest.mark.slow
def test_infer_records_carry_the_class_id_and_unreadable_images_are_none(tmp_path):
    for image in coco_images(3):
        shutil.copy(image, tmp_path / image.name)
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    found = api.infer(str(tmp_path), WEIGHTS, imgsz=320, conf=0.5)
    assert found[str(tmp_path / "broken.jpg")] is None
    boxes = [b for name, records in found.items() if records is not None for b in records]
    assert len(found) == 4 and boxes and all(b["score"] > 0.5 for b in boxes)  # conf= is conf_thres
    assert all(coco_names()[b["class_id"]] == b["class_name"] for b in boxes)
