"""One pass over the images serves mining, its side data and infer (executor.pipeline.passes.Pass): each batch is
forwarded once, and every reader reads that one forward."""
import pytest

from executor.pipeline import passes
from executor.pipeline.passes import Pass, open_scorer
from executor.pipeline.side_files import SideSpec
from executor.protocol.settings import build_settings
from tests.platform import coco_images, template_detector

IMAGES = [str(p) for p in coco_images(6)]
SIDE = SideSpec(embeddings="v", hashes="h", class_counts=True, boxes=True)  # what selection: diverse keeps

pytestmark = pytest.mark.slow  # the real yolov8n


@pytest.fixture(scope="module")
def detector():
    return template_detector(320)


def run_pass(detector, algorithm: str | None, infer: bool, side: dict | None = None, monkeypatch=None):
    """The pass's results and how often the whole network and the class branch alone ran."""
    loop = {"img_size": 320, "batch_size_per_gpu": 4, "num_workers_per_gpu": 0}
    settings = {}
    work = Pass(settings)
    if algorithm:
        settings["mining"] = s = build_settings("mining", {**loop, "mining_algorithm": algorithm})
        work.scorer = open_scorer(s)
        if work.scorer.needs_model:
            work.mining_detector = detector.with_postprocess(s.conf_thres, s.iou_thres, s.max_det)
        if side:
            work.side = side
            work.side_detector = work.mining_detector or detector.with_postprocess(s.conf_thres, s.iou_thres,
                                                                                   s.max_det)
            work.side_detector.enable_embeddings()
    if infer:
        settings["infer"] = s = build_settings("infer", loop)
        work.infer_detector = detector.with_postprocess(s.conf_thres, s.iou_thres, s.max_det)
    head, class_branch, calls = detector.net.model[-1], detector.class_net.layers[-1].cv3[0], []
    handles = [head.register_forward_hook(lambda *args: calls.append("whole")),
               class_branch.register_forward_hook(lambda *args: calls.append("class branch"))]
    seen = []
    if monkeypatch is not None:  # keep the batches, to see what they hold once the pass is done
        batches = passes.image_batches
        monkeypatch.setattr(passes, "image_batches", lambda *a, **k: (seen.append(b) or b for b in batches(*a, **k)))
    try:
        found = work.run(IMAGES, lambda done: None, {})
    finally:
        for handle in handles:
            handle.remove()
    assert all(batch.forward is None for batch in seen)  # nothing kept past the batch
    whole = calls.count("whole")
    return found, whole, calls.count("class branch") - whole  # the head's own cv3 runs in a whole forward too


@pytest.mark.parametrize("algorithm", ["aldd", "entropy"])
def test_mining_and_infer_forward_each_batch_once(detector, algorithm, monkeypatch):
    both, forwards, branch_only = run_pass(detector, algorithm, infer=True, monkeypatch=monkeypatch)
    mining, mining_forwards, mining_branch_only = run_pass(detector, algorithm, infer=False)
    infer, infer_forwards, _ = run_pass(detector, None, infer=True)
    assert infer_forwards >= 2  # 6 images in batches of at most 4
    assert forwards == infer_forwards and branch_only == 0  # infer reads the boxes of the scorer's own forward
    assert mining_forwards == (0 if algorithm == "aldd" else infer_forwards)  # ALDD alone: the class branch only
    assert mining_branch_only == (infer_forwards if algorithm == "aldd" else 0)
    assert both["mining"] == mining["mining"]
    assert both["infer"] == infer["infer"] and sum(len(r) for r in infer["infer"].values()) > 5


@pytest.mark.parametrize("algorithm", ["entropy", "aldd", "random"])
def test_side_data_and_infer_read_the_scorers_forward(detector, algorithm, monkeypatch):
    """Embeddings, boxes and class counts of selection: diverse, with infer, from one forward per batch; random,
    which runs no model, runs that one forward for them."""
    found, forwards, branch_only = run_pass(detector, algorithm, infer=True, side=SIDE, monkeypatch=monkeypatch)
    alone, _, _ = run_pass(detector, algorithm, infer=False)
    infer, infer_forwards, _ = run_pass(detector, None, infer=True)
    assert forwards == infer_forwards and branch_only == 0
    assert found["mining"] == alone["mining"] and found["infer"] == infer["infer"]
    embedding, boxes, (hashed, thumbnail) = found["side"][IMAGES[0]]
    assert embedding.shape == (448,) and hashed is not None and thumbnail is not None
    assert boxes.masks is None and len(boxes) > 0


def mine(detector, algorithm: str, batch: int, shards=None) -> dict:
    """The scores (and side data) one pass gives IMAGES at `batch`, or, with `shards`, each shard's found dict."""
    settings = build_settings("mining", {"img_size": 320, "batch_size_per_gpu": batch, "num_workers_per_gpu": 0,
                                         "mining_algorithm": algorithm})
    work = Pass({"mining": settings}, scorer=open_scorer(settings), side=SideSpec(boxes=True))
    work.mining_detector = work.side_detector = detector.with_postprocess(settings.conf_thres, settings.iou_thres,
                                                                          settings.max_det)
    if shards is None:
        return work.run(IMAGES, lambda done: None, {})
    return list(work.run_shards(shards, lambda done: None))


@pytest.mark.parametrize("algorithm", ["entropy", "aldd", "cald"])
def test_scores_do_not_depend_on_the_batch_size(detector, algorithm):
    """The same bytes whatever the batch size, 1 included: on CPU a lone image would take other convolution kernels
    than in a batch, and a matrix product of ALDD's class scores another summation order."""
    found = {batch: mine(detector, algorithm, batch) for batch in (1, 3, 6)}
    assert found[1]["mining"] == found[3]["mining"] == found[6]["mining"]
    assert len(set(found[6]["mining"].values())) == len(IMAGES)


def test_a_batch_spans_shards_and_each_shard_comes_once_done(detector):
    """Shards of 2 images at batch 4: batches take images of the next shard (no part-empty batch at each shard's
    end); each shard comes with exactly its own images' scores and side data, the same as one pass over all."""
    from executor.pipeline.shards import plan

    shards = plan(IMAGES, 2)
    whole = mine(detector, "entropy", 4)
    forwards = []
    hook = detector.net.model[-1].register_forward_hook(lambda *args: forwards.append(1))
    try:
        found = mine(detector, "entropy", 4, shards)
    finally:
        hook.remove()
    assert sorted(shard.index for shard, _ in found) == [0, 1, 2]
    for shard, got in found:
        assert set(got["mining"]) == set(got["side"]) == set(shard.keys) and got["unreadable"] == {}
        assert got["mining"] == {key: whole["mining"][key] for key in shard.keys}
    from executor.engine.images import read_image

    shape = {key: detector.letterbox(read_image(key))[0].shape for key in IMAGES}
    assert len(forwards) == len(set(shape.values())) < sum(len({shape[k] for k in s.keys}) for s in shards)


def test_shards_go_through_the_loop_a_group_at_a_time(detector, monkeypatch):
    """SHARDS_PER_LOOP shards per loop (its maps of keys bounded whatever the pool size): each shard's results are
    those of one loop over all, and the images done are counted on across the groups."""
    from executor.pipeline.shards import plan

    shards = plan(IMAGES, 1)
    whole = {shard.index: got["mining"] for shard, got in mine(detector, "entropy", 4, shards)}
    monkeypatch.setattr(passes, "SHARDS_PER_LOOP", 2)
    settings = build_settings("mining", {"img_size": 320, "batch_size_per_gpu": 4, "num_workers_per_gpu": 0,
                                         "mining_algorithm": "entropy"})
    work = Pass({"mining": settings}, scorer=open_scorer(settings), side=SideSpec(boxes=True))
    work.mining_detector = work.side_detector = detector.with_postprocess(settings.conf_thres, settings.iou_thres,
                                                                          settings.max_det)
    done = []
    grouped = list(work.run_shards(shards, done.append))
    assert [shard.index for shard, _ in grouped] == sorted(shard.index for shard, _ in grouped)
    assert {shard.index: got["mining"] for shard, got in grouped} == whole
    assert done == sorted(done) and done[-1] == len(IMAGES) and len(set(done)) > 3
