"""The one labelled pass (mining/truth.py) on hand-made examples worked out by hand: the quality benchmark, the
error model and the evaluation trust these outcomes."""
import numpy as np

from mining.truth import ImageTruth, count_errors, match


def truth(boxes=(), cls=(), ignore=(), ignore_cls=(), crowd=True):
    return ImageTruth("img.jpg", list(boxes), list(cls), list(ignore), list(ignore_cls), crowd)


def test_errors_tp_fp_fn_class_aware():
    t = truth(boxes=[[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], cls=[0, 0, 1])
    dets = np.array([[0, 0, 10, 10],      # TP (class 0, IoU 1)
                     [21, 21, 31, 31],    # TP (class 0, IoU 81/119 = 0.68)
                     [40, 40, 50, 50],    # right place, wrong class -> FP, and the class-1 box is missed
                     [100, 100, 110, 110]])  # nothing there -> FP
    e = count_errors(dets, [0.9, 0.8, 0.7, 0.6], [0, 0, 2, 0], t)
    assert (e.tp, e.fp, e.fn, e.ignored, e.errors) == (2, 2, 1, 0, 3)


def test_errors_iou_threshold_and_duplicates():
    t = truth(boxes=[[0, 0, 10, 10]], cls=[0])
    # IoU of [0,0,10,5] with the box is 0.5 exactly: a match; the lower-scored duplicate is a FP
    e = count_errors([[0, 0, 10, 10], [0, 0, 10, 5]], [0.5, 0.9], [0, 0], t)
    assert (e.tp, e.fp, e.fn) == (1, 1, 0)
    # just under 0.5: no match -> one FP and one FN
    e = count_errors([[0, 0, 10, 4.9]], [0.9], [0], t)
    assert (e.tp, e.fp, e.fn) == (0, 1, 1)


def test_errors_greedy_by_confidence():
    # the higher-scored detection takes the box even though the other one overlaps it better
    t = truth(boxes=[[0, 0, 10, 10]], cls=[0])
    e = count_errors([[0, 0, 10, 10], [0, 0, 10, 7]], [0.3, 0.9], [0, 0], t)
    assert (e.tp, e.fp, e.fn) == (1, 1, 0)


def test_crowd_and_difficult_regions_are_ignored():
    # COCO crowd: a detection inside the crowd region (intersection / detection area >= 0.5) is ignored,
    # even though its IoU with the big region is tiny; the crowd itself is never a miss
    crowd = truth(boxes=[], cls=[], ignore=[[0, 0, 100, 100]], ignore_cls=[0], crowd=True)
    e = count_errors([[10, 10, 20, 20], [10, 10, 20, 20]], [0.9, 0.8], [0, 1], crowd)
    assert (e.tp, e.fp, e.fn, e.ignored) == (0, 1, 0, 1)  # class 1 is not the crowd's class: FP
    # VOC difficult: matched by IoU, so a small box inside a difficult object is a FP
    hard = truth(boxes=[], cls=[], ignore=[[0, 0, 100, 100]], ignore_cls=[0], crowd=False)
    e = count_errors([[10, 10, 20, 20], [0, 0, 100, 90]], [0.9, 0.8], [0, 0], hard)
    assert (e.tp, e.fp, e.fn, e.ignored) == (0, 1, 0, 1)
    # a real box is preferred over an ignore region
    both = truth(boxes=[[0, 0, 100, 100]], cls=[0], ignore=[[0, 0, 100, 100]], ignore_cls=[0], crowd=False)
    e = count_errors([[0, 0, 100, 100]], [0.9], [0], both)
    assert (e.tp, e.fp, e.fn, e.ignored) == (1, 0, 0, 0)


def test_unlabelled_classes_are_ignored():
    t = truth(boxes=[[0, 0, 10, 10]], cls=[0])
    e = count_errors([[50, 50, 60, 60], [0, 0, 10, 10]], [0.9, 0.8], [13, 0], t, classes={0, 1})
    assert (e.tp, e.fp, e.fn, e.ignored) == (1, 0, 0, 1)


def test_no_detections_no_truth():
    e = count_errors(np.zeros((0, 4)), [], [], truth())
    assert (e.tp, e.fp, e.fn, e.errors) == (0, 0, 0, 0)


def test_outcomes_are_per_detection_in_the_order_given():
    t = truth(boxes=[[0, 0, 10, 10]], cls=[0], ignore=[[50, 50, 60, 60]], ignore_cls=[0], crowd=False)
    found = match([[50, 50, 60, 60], [0, 0, 10, 10], [0, 0, 10, 10], [200, 200, 210, 210]],
                  [0.5, 0.9, 0.8, 0.7], [0, 0, 0, 0], t)
    assert found.tp.tolist() == [False, True, False, False]
    assert found.ignored.tolist() == [True, False, False, False]
    assert found.fp.tolist() == [False, False, True, True]
    assert found.misses == 0
