"""The label audit of one image (mining/audit.py) on hand-made labels and predictions worked out by hand: each kind
of finding, its score, evidence and fix, and the look-alikes that are no finding."""
import numpy as np
import pytest

from mining.audit import (CONFIDENT_CONF, DUPLICATE, MISSING, POOR_BOX, SPURIOUS, WRONG_CLASS, Evidence, Fix,
                          audit_image)
from mining.truth import ImageTruth

CAT, DOG, PERSON, HORSE = 0, 1, 2, 3


def truth(boxes=(), cls=()):
    return ImageTruth("img.jpg", list(boxes), list(cls))


def audit(labels, preds, probs=None, **kwargs):
    """`preds`: (box, conf, cls) rows."""
    xyxy = [p[0] for p in preds]
    return audit_image(labels, np.asarray(xyxy, np.float64).reshape(-1, 4), [p[1] for p in preds],
                       [p[2] for p in preds], probs, **kwargs)


def test_a_well_labelled_image_has_no_finding():
    labels = truth([[0, 0, 100, 100], [200, 0, 300, 100]], [CAT, DOG])
    preds = [([0, 0, 100, 100], 0.9, CAT), ([202, 1, 300, 100], 0.8, DOG),
             ([0, 0, 100, 90], 0.6, CAT),            # a second, confident box on the cat: NMS left it, no object
             ([400, 400, 450, 450], 0.3, CAT),       # a doubt on the background, below the confident level
             ([0, 0, 100, 100], 0.2, DOG)]           # a weak other class on the cat: the cat is backed at 0.9
    assert audit(labels, preds) == []
    assert audit(truth(), []) == []


def test_missing_a_confident_prediction_on_no_labelled_box():
    labels = truth([[0, 0, 100, 100]], [CAT])
    found = audit(labels, [([0, 0, 100, 100], 0.9, CAT), ([300, 300, 400, 400], 0.8, DOG),
                           ([305, 300, 400, 400], 0.7, DOG),      # the same dog again (IoU 0.95): one finding
                           ([600, 0, 700, 100], 0.95, HORSE)],    # a class nobody labels here: no finding
                  classes={CAT, DOG})
    assert [(f.kind, f.annotation, f.cls) for f in found] == [(MISSING, -1, DOG)]
    (f,) = found
    assert f.score == pytest.approx(0.8) and f.box == (300, 300, 400, 400)
    assert f.evidence == Evidence((300, 300, 400, 400), DOG, 0.0, pytest.approx(0.8))
    assert f.fix == Fix("add_box", cls=DOG, box=(300, 300, 400, 400))
    # every class counts without `classes`; below the confident level nothing is missing
    assert {f.cls for f in audit(labels, [([300, 300, 400, 400], 0.8, DOG), ([600, 0, 700, 100], 0.95, HORSE)])
            if f.kind == MISSING} == {DOG, HORSE}
    assert audit(labels, [([0, 0, 100, 100], 0.9, CAT), ([300, 300, 400, 400], 0.4, DOG)]) == []
    assert [f.kind for f in audit(labels, [([0, 0, 100, 100], 0.9, CAT), ([300, 300, 400, 400], 0.4, DOG)],
                                  confident=0.3)] == [MISSING]


def test_missing_beside_a_backed_box_of_its_class():
    """Two people overlapping, one labelled and backed: the other one's prediction (IoU 1/3) is a missing
    person, not a poor box of the labelled one."""
    labels = truth([[0, 0, 100, 100]], [PERSON])
    found = audit(labels, [([0, 0, 100, 100], 0.9, PERSON), ([50, 0, 150, 100], 0.8, PERSON)])
    assert [(f.kind, f.box) for f in found] == [(MISSING, (50, 0, 150, 100))]
    assert found[0].evidence.iou == pytest.approx(1 / 3)


def test_spurious_a_box_nothing_is_seen_on():
    labels = truth([[0, 0, 100, 100], [200, 0, 300, 100], [400, 0, 500, 100]], [CAT, CAT, CAT])
    found = audit(labels, [([400, 0, 500, 100], 0.9, CAT),
                           ([200, 0, 260, 100], 0.05, DOG),     # a weak overlap (IoU 0.6): little support
                           ([0, 0, 100, 100], 0.005, CAT)])    # under the support level: not read
    assert [(f.kind, f.annotation) for f in found] == [(SPURIOUS, 0), (SPURIOUS, 1)]
    assert found[0].score == 1.0 and found[0].evidence is None and found[0].fix == Fix("delete_box")
    assert found[1].score == pytest.approx(0.95 * (1 - 0.6))  # something faint near it: less likely invented
    assert found[1].evidence == Evidence((200, 0, 260, 100), DOG, pytest.approx(0.6), pytest.approx(0.05))
    # support of any class, down to the support level, overlapping by SPURIOUS_IOU, clears a box
    assert audit(truth([[0, 0, 100, 100]], [CAT]), [([0, 0, 100, 40], 0.2, DOG)]) == []  # IoU 0.4
    assert [f.kind for f in audit(truth([[0, 0, 100, 100]], [CAT]), [([0, 0, 100, 20], 0.2, DOG)])] == [SPURIOUS]
    weak = audit(truth([[0, 0, 100, 100]], [CAT]), [([0, 0, 100, 100], 0.005, CAT)], support=0.001)
    assert [f.kind for f in weak] == [SPURIOUS] and weak[0].score == pytest.approx(0.0)  # read, too weak, yet on it
    near = audit(truth([[0, 0, 100, 100]], [CAT]), [([0, 0, 100, 20], 0.2, DOG)])
    assert near[0].score == pytest.approx(1 - 0.2)  # the overlap (IoU 0.2) is too small to support, yet near


def test_wrong_class_a_confident_other_class_on_the_box():
    labels = truth([[0, 0, 100, 100]], [CAT])
    probs = np.array([[0.2, 0.9, 0, 0]])  # the dog box gives the cat 0.2
    found = audit(labels, [([0, 0, 100, 95], 0.9, DOG)], probs)
    assert [(f.kind, f.annotation, f.cls) for f in found] == [(WRONG_CLASS, 0, CAT)]
    (f,) = found
    assert f.score == pytest.approx(0.9 * (1 - 0.2))
    assert f.evidence == Evidence((0, 0, 100, 95), DOG, pytest.approx(0.95), pytest.approx(0.9))
    assert f.fix == Fix("change_class", cls=DOG)
    # without class vectors the own class's support is that of its predictions
    assert audit(labels, [([0, 0, 100, 95], 0.9, DOG)])[0].score == pytest.approx(0.9)
    assert audit(labels, [([0, 0, 100, 95], 0.9, DOG), ([0, 0, 100, 100], 0.3, CAT)])[0].score == \
        pytest.approx(0.9 * 0.7)
    # backed by its own class: no finding; a weak other class: no finding (and the box is supported)
    assert audit(labels, [([0, 0, 100, 95], 0.9, DOG)], np.array([[0.6, 0.9, 0, 0]])) == []
    assert audit(labels, [([0, 0, 100, 95], 0.4, DOG)]) == []


def test_no_wrong_class_where_a_box_of_the_other_class_explains_the_prediction():
    """A rider on a horse: the horse prediction lies on the rider's box, and on the horse's own box."""
    labels = truth([[0, 0, 100, 100], [0, 10, 100, 100]], [PERSON, HORSE])
    found = audit(labels, [([0, 10, 100, 100], 0.9, HORSE), ([0, 0, 100, 100], 0.3, PERSON)])
    assert found == []


def test_poor_box_a_confident_prediction_of_its_class_overlapping_partly():
    labels = truth([[0, 0, 100, 100]], [CAT])
    found = audit(labels, [([50, 0, 150, 100], 0.8, CAT)])
    assert [(f.kind, f.annotation) for f in found] == [(POOR_BOX, 0)]  # not also a missing cat
    (f,) = found
    assert f.score == pytest.approx(0.8 * (1 - 1 / 3))
    assert f.evidence == Evidence((50, 0, 150, 100), CAT, pytest.approx(1 / 3), pytest.approx(0.8))
    assert f.fix == Fix("replace_box", box=(50, 0, 150, 100))
    # weak own support lowers the score; the prediction nearer to another cat box is about that one
    probs = np.array([[0.3, 0, 0, 0], [0.8, 0, 0, 0]])
    found = audit(labels, [([0, 0, 100, 100], 0.3, CAT), ([50, 0, 150, 100], 0.8, CAT)], probs)
    assert found[0].kind == POOR_BOX and found[0].score == pytest.approx(0.8 * (2 / 3) * 0.7)
    two = truth([[0, 0, 100, 100], [60, 0, 160, 100]], [CAT, CAT])
    found = audit(two, [([50, 0, 150, 100], 0.8, CAT), ([60, 0, 160, 100], 0.9, CAT)])
    assert found == []  # the 0.8 box (IoU 1/3 with box 0) lies on box 1 (IoU 0.82), backed at 0.9
    # below POOR_MIN_IOU it is another object (IoU 0.03); under the confident level no evidence
    assert [f.kind for f in audit(labels, [([95, 0, 195, 100], 0.8, CAT)])] == [SPURIOUS, MISSING]
    assert [f.kind for f in audit(labels, [([50, 0, 150, 100], CONFIDENT_CONF - 0.1, CAT)])] == []


def test_duplicate_two_boxes_of_one_class_on_one_object():
    labels = truth([[0, 0, 100, 100], [300, 0, 400, 100], [0, 0, 100, 81], [300, 0, 400, 100]],
                   [CAT, CAT, CAT, DOG])
    preds = [([0, 0, 100, 100], 0.9, CAT), ([300, 0, 400, 100], 0.9, CAT), ([300, 0, 400, 100], 0.8, DOG)]
    found = audit(labels, preds)
    assert [(f.kind, f.annotation) for f in found] == [(DUPLICATE, 2)]  # the cat and dog at one place are no pair
    (f,) = found
    assert f.score == pytest.approx(0.81)
    assert f.evidence == Evidence((0, 0, 100, 100), CAT, pytest.approx(0.81), annotation=0)
    assert f.fix == Fix("delete_duplicate", annotation=0)


def test_findings_come_worst_first_and_scores_lie_in_0_1():
    labels = truth([[0, 0, 100, 100], [200, 0, 300, 100], [400, 0, 500, 100]], [CAT, CAT, DOG])
    found = audit(labels, [([200, 0, 300, 100], 0.7, DOG), ([400, 0, 500, 100], 0.9, DOG),
                           ([600, 0, 700, 100], 0.6, CAT)])
    assert [(f.kind, f.annotation) for f in found] == [(SPURIOUS, 0), (WRONG_CLASS, 1), (MISSING, -1)]
    assert [f.score for f in found] == pytest.approx([1.0, 0.7, 0.6])


def test_inconsistent_detections_are_an_error():
    with pytest.raises(ValueError, match="img.jpg: detections of inconsistent shapes"):
        audit_image(truth(), [[0, 0, 1, 1]], [0.5, 0.6], [0, 0])
    with pytest.raises(ValueError, match="inconsistent"):
        audit_image(truth(), [[0, 0, 1, 1]], [0.5], [0], np.zeros((2, 3)))
