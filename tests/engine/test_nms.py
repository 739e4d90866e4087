"""executor.engine.nms: the same boxes as torchvision.ops.batched_nms, without importing torchvision."""
import subprocess
import sys

import pytest
import torch

from executor.engine.nms import PER_CLASS_ABOVE, batched_nms
from tests.platform import REPO


def random_boxes(n: int, classes: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 600
    wh = torch.rand(n, 2, generator=g) * 120 + 2
    scores = torch.rand(n, generator=g)
    scores[: n // 10] = scores[n // 10: 2 * (n // 10)]  # some tied scores
    return torch.cat([xy, xy + wh], 1), scores, torch.randint(0, classes, (n,), generator=g)


@pytest.mark.parametrize("n", [0, 1, 50, PER_CLASS_ABOVE["cpu"] + 500])
def test_same_boxes_as_torchvision(n):
    import torchvision

    boxes, scores, classes = random_boxes(n, 5, seed=n)
    ours = batched_nms(boxes, scores, classes, 0.45)
    theirs = torchvision.ops.batched_nms(boxes, scores, classes, 0.45)
    assert ours.dtype == torch.int64 and sorted(ours.tolist()) == sorted(theirs.tolist())
    assert torch.equal(scores[ours], scores[theirs])  # the same order up to tied scores
    if n > 50:
        assert 0 < len(ours) < n  # something was suppressed, something kept


def test_classes_never_suppress_each_other():
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10]])
    kept = batched_nms(boxes, torch.tensor([0.9, 0.8, 0.7]), torch.tensor([0, 1, 0]), 0.5)
    assert kept.tolist() == [0, 1]


def test_mining_never_imports_torchvision():
    code = ("import sys; from executor.runtime import prepare_process_env; prepare_process_env(); "
            "import executor.pipeline.tasks, mining, torch; from executor.engine.nms import batched_nms; "
            "batched_nms(torch.tensor([[0., 0, 1, 1]]), torch.tensor([1.]), torch.tensor([0]), 0.5); "
            "print('torchvision' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
