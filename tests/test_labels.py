import numpy as np
import pytest

from m2skd.common import labels as L


@pytest.mark.parametrize(
    "raw,train",
    [(0, 0), (1, 0), (10, 1), (252, 1), (11, 2), (15, 3), (18, 4), (258, 4), (13, 5), (16, 5), (20, 5),
     (256, 5), (257, 5), (259, 5), (30, 6), (254, 6), (31, 7), (253, 7), (32, 8), (255, 8), (40, 9), (60, 9),
     (44, 10), (48, 11), (49, 12), (50, 13), (51, 14), (52, 0), (70, 15), (71, 16), (72, 17), (80, 18),
     (81, 19), (99, 0)],
)
def test_learning_map_hand_cases(raw, train):
    # the semantic-kitti.yaml learning_map, written out by hand
    assert L.raw_to_train(np.array([raw], np.uint32))[0] == train


def test_instance_bits_do_not_change_the_class():
    raw = np.array([10 | (7 << 16), 30 | (123 << 16)], np.uint32)
    assert L.raw_to_train(raw).tolist() == [1, 6]


def test_unknown_raw_id_names_the_source():
    with pytest.raises(L.UnknownLabelError, match=r"scan\.label.*\[7\]"):
        L.raw_to_train(np.array([10, 7, 7], np.uint32), "scan.label")


def test_inverse_map_round_trips_and_gives_static_ids():
    train = np.arange(20)
    raw = L.train_to_raw(train)
    assert raw[6] == 30 and raw[9] == 40 and raw[19] == 81
    assert (L.raw_to_train(raw) == train).all()
    assert not L.is_moving(raw).any()
    with pytest.raises(ValueError):
        L.train_to_raw(np.array([20]))


def test_class_table_consistency():
    assert len(L.CLASS_NAMES) == L.NUM_CLASSES == 20
    # each train class name is the name of its inverse-map raw id
    by_raw = {r.raw_id: r.name for r in L.RAW_LABELS}
    assert [by_raw[r] for r in L.LEARNING_MAP_INV[1:]] == list(L.CLASS_NAMES[1:])
    assert L.HARD_CLASS_IDS == (2, 3, 4, 5, 6, 7, 8)
    assert L.is_moving(np.array([252, 259, 81])).tolist() == [True, True, False]
    assert L.train_colors_rgb().shape == (20, 3)
    with pytest.raises(ValueError, match="unknown train class"):
        L.class_ids(["bike"])
