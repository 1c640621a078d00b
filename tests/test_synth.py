"""The synthetic generator: layout, determinism, labels, pose convention, realism."""

import hashlib

import numpy as np
import pytest

from m2skd.common import kitti_io as K
from m2skd.common.geometry import relative_pose, transform_points
from m2skd.common.labels import HARD_CLASS_IDS, MOVING_RAW_MIN, RAW_BY_NAME, raw_to_train
from m2skd.synth.config import SynthConfig
from m2skd.synth.sequence import SequenceSim, generate_sequence

from .conftest import SMALL, nn_dist, real_path


def _digest(seq: K.Sequence) -> str:
    h = hashlib.sha256()
    for f in sorted(seq.path.rglob("*")):
        if f.is_file():
            h.update(f.relative_to(seq.path).as_posix().encode() + f.read_bytes())
    return h.hexdigest()


def test_layout_reads_back(synth_root):
    for name in ("00", "08"):
        seq = K.Sequence(synth_root, name)
        frames = seq.frames()
        assert frames == list(range(SMALL.scans))
        poses = seq.lidar_poses(len(frames))
        assert np.allclose(poses[0], np.eye(4), atol=1e-9)
        assert len(K.read_times(seq.path / "times.txt")) == SMALL.scans
        for f in frames:
            pts, sem, _inst = seq.read(f)
            raw_to_train(sem, str(seq.label_path(f)))  # every raw id is a known one
            assert len(pts) > 1000


def test_test_split_has_no_labels(synth_root):
    seq = K.Sequence(synth_root, "11")
    assert not seq.has_labels and len(seq.frames()) == SMALL.scans


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path, synth_root):
    again = generate_sequence(tmp_path / "a", "00", SMALL)
    assert _digest(again) == _digest(K.Sequence(synth_root, "00"))
    other = generate_sequence(tmp_path / "b", "00", SMALL.override(seed=1))
    assert _digest(other) != _digest(again)


def test_resume_after_interruption_gives_the_same_bytes(tmp_path, synth_root):
    seq = generate_sequence(tmp_path, "00", SMALL)
    for f in (4, 5, 11):  # as if the run had stopped there
        seq.scan_path(f).unlink()
    seq.label_path(11).unlink()
    calls = []
    generate_sequence(tmp_path, "00", SMALL, on_scan=calls.append)
    assert calls == list(range(SMALL.scans))
    assert _digest(seq) == _digest(K.Sequence(synth_root, "00"))


def test_instances_are_stable_and_moving_objects_carry_25x_ids(synth_root):
    seq = K.Sequence(synth_root, "00")
    inst_class: dict[int, set] = {}
    moving = 0
    for f in seq.frames():
        _, sem, inst = seq.read(f)
        moving += int((sem >= MOVING_RAW_MIN).sum())
        assert (inst[sem == 40] == 0).all()  # stuff has no instance id
        for i in np.unique(inst[inst > 0]):
            inst_class.setdefault(int(i), set()).update(np.unique(raw_to_train(sem[inst == i])).tolist())
    assert moving > 0
    assert inst_class and all(len(c) == 1 for c in inst_class.values())


def _instance_points(seq, frame, instance):
    pts, sem, inst = seq.read(frame)
    return pts[inst == instance], sem[inst == instance]


def test_pose_convention_aligns_static_objects(synth_root):
    """Static structure of scan j, moved with inv(T_t) @ T_j, lands on itself in scan t."""
    seq = K.Sequence(synth_root, "00")
    poses = seq.lidar_poses()
    cam = K.read_poses(seq.path / "poses.txt")
    t, j = 6, 3

    def static(frame):
        pts, sem, _ = seq.read(frame)
        keep = np.isin(sem, [50, 51, 71, 80]) & (np.linalg.norm(pts[:, :3], axis=1) < 25)
        return pts[keep]

    target, source = static(t), static(j)
    assert min(len(target), len(source)) >= 200
    aligned = transform_points(source, relative_pose(poses, j, t))
    assert np.median(nn_dist(aligned, target)) < 0.1
    # reading poses.txt as if it held LiDAR poses (ignoring Tr) misplaces them
    wrong = transform_points(source, relative_pose(cam, j, t))
    assert np.median(nn_dist(wrong, target)) > 0.5


def test_moving_objects_move(synth_root):
    """A moving car (oncoming at 8-14 m/s: metres apart in 0.4 s), aligned with the poses
    only, does not land on itself; a walking person moves too little for this yardstick."""
    seq = K.Sequence(synth_root, "00")
    poses = seq.lidar_poses()
    t, j = 8, 4
    _, sem, inst = seq.read(t)
    _, _sem_j, inst_j = seq.read(j)
    assert (sem >= MOVING_RAW_MIN).any()
    moving_car = RAW_BY_NAME["moving-car"]
    ids = [i for i in np.unique(inst[sem == moving_car]) if (inst_j == i).sum() >= 10 and (inst == i).sum() >= 10]
    assert ids
    i = ids[0]
    aligned = transform_points(_instance_points(seq, j, i)[0], relative_pose(poses, j, t))
    assert np.median(nn_dist(aligned, _instance_points(seq, t, i)[0])) > 0.5


def test_full_size_scan_is_in_the_real_ballpark():
    """One HDL-64E-size scan beside the real SemanticKITTI scan of shared/data/real."""
    real_xyz = np.load(real_path("semantickitti_points_000750.npy"))
    real_lab = np.load(real_path("semantickitti_labels_000750.npy")).ravel()
    sim = SequenceSim(SynthConfig.preset("full"), "00")
    counts = np.zeros(20)
    ranges = []
    for f in (0, 50, 100, 150, 199):
        pts, sem, _ = sim.scan(f)
        assert 80_000 <= len(pts) <= 130_000
        counts += np.bincount(raw_to_train(sem), minlength=20)
        ranges.append(np.linalg.norm(pts[:, :3], axis=1))
    share = counts / counts.sum()
    real_share = np.bincount(real_lab, minlength=20) / len(real_lab)
    # the big surfaces dominate in both
    big = [9, 11, 13, 15]  # road, sidewalk, building, vegetation
    assert share[big].sum() > 0.5 and real_share[big].sum() > 0.5
    assert all(share[c] < 0.02 for c in HARD_CLASS_IDS)
    med, real_med = np.median(np.concatenate(ranges)), np.median(np.linalg.norm(real_xyz, axis=1))
    assert 0.5 < med / real_med < 2.0


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="beams"):
        SequenceSim(SMALL.override(beams=65), "00")
