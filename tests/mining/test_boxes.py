import numpy as np

from mining.boxes import box_ioa, box_iou, greedy_match


def test_box_iou_hand_values():
    iou = box_iou(np.array([[0, 0, 2, 2]]), np.array([[1, 1, 3, 3], [0, 0, 2, 2], [5, 5, 6, 6], [1, 1, 1, 5]]))
    np.testing.assert_allclose(iou, [[1 / 7, 1.0, 0.0, 0.0]])
    iou = box_iou(np.array([[0, 0, 10, 10]] * 2), np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]]))
    np.testing.assert_allclose(iou, [[1, 1 / 3, 0], [1, 1 / 3, 0]])
    assert box_iou(np.zeros((0, 4)), np.zeros((3, 4))).shape == (0, 3)
    assert box_iou(np.array([[2, 2, 0, 0]]), np.array([[0, 0, 2, 2]]))[0, 0] == 0  # inverted: no area


def test_box_ioa_is_the_covered_share_of_the_first_box():
    ioa = box_ioa(np.array([[0, 0, 10, 10], [0, 0, 0, 5]]), np.array([[5, 0, 20, 10]]))
    np.testing.assert_allclose(ioa, [[0.5], [0.0]])


def test_greedy_match_takes_the_best_free_allowed_column_in_row_order():
    iou = np.array([[0.9, 0.6, 0.0],
                    [0.8, 0.7, 0.0],    # column 0 is taken: falls back to column 1
                    [0.95, 0.9, 0.4]])  # 0 and 1 taken, 0.4 is below the threshold
    np.testing.assert_array_equal(greedy_match(iou, 0.5), [0, 1, -1])
    allowed = np.array([[False, True, True]] * 3)
    np.testing.assert_array_equal(greedy_match(iou, 0.5, allowed), [1, -1, -1])
    assert greedy_match(np.zeros((2, 0)), 0.5).tolist() == [-1, -1]
