"""One pass over the images serves mining and infer (executor.pipeline.passes.Pass): each batch is forwarded once."""
import pytest

from executor.pipeline.passes import Pass, open_scorer
from executor.protocol.settings import build_settings
from tests.platform import coco_images, template_detector

IMAGES = [str(p) for p in coco_images(6)]

pytestmark = pytest.mark.slow  # the real yolov8n


@pytest.fixture(scope="module")
def detector():
    return template_detector(320)


def run_pass(detector, algorithm: str | None, infer: bool):
    loop = {"img_size": 320, "batch_size_per_gpu": 4, "num_workers_per_gpu": 0}
    settings = {}
    work = Pass(settings)
    if algorithm:
        settings["mining"] = build_settings("mining", {**loop, "mining_algorithm": algorithm})
        work.scorer = open_scorer(settings["mining"])
        s = settings["mining"]
        work.mining_detector = detector.with_postprocess(s.conf_thres, s.iou_thres, s.max_det)
    if infer:
        settings["infer"] = s = build_settings("infer", loop)
        work.infer_detector = detector.with_postprocess(s.conf_thres, s.iou_thres, s.max_det)
    head, calls = detector.net.model[-1], []
    handle = head.register_forward_hook(lambda *args: calls.append("head"))
    try:
        found = work.run(IMAGES, lambda done: None, {})
    finally:
        handle.remove()
    return found, len(calls)


@pytest.mark.parametrize("algorithm", ["aldd", "entropy"])
def test_mining_and_infer_forward_each_batch_once(detector, algorithm):
    both, forwards = run_pass(detector, algorithm, infer=True)
    mining, mining_forwards = run_pass(detector, algorithm, infer=False)
    infer, infer_forwards = run_pass(detector, None, infer=True)
    assert infer_forwards >= 2  # 6 images in batches of at most 4
    assert forwards == infer_forwards  # infer reads the boxes of the scorer's own forward
    assert mining_forwards == (0 if algorithm == "aldd" else infer_forwards)  # ALDD alone: the class branch only
    assert both["mining"] == mining["mining"]
    assert both["infer"] == infer["infer"] and sum(len(r) for r in infer["infer"].values()) > 5
    assert not detector.tap.raw and detector.tap.canvases is None  # nothing kept past the batch
