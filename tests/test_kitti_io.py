import numpy as np
import pytest

from m2skd.common import kitti_io as K
from m2skd.common.splits import parse_sequences
from m2skd.synth.config import kitti_calib_matrices

from .conftest import real_path


def test_scan_round_trip(tmp_path):
    pts = np.random.default_rng(0).normal(size=(100, 4)).astype(np.float32)
    K.write_scan(tmp_path / "a.bin", pts)
    assert (tmp_path / "a.bin").stat().st_size == 100 * 16
    assert np.array_equal(K.read_scan(tmp_path / "a.bin"), pts)


def test_label_round_trip_packs_instance_in_high_bits(tmp_path):
    sem = np.array([10, 40, 254], np.uint32)
    inst = np.array([3, 0, 65535], np.uint32)
    K.write_label(tmp_path / "a.label", sem, inst)
    raw = np.fromfile(tmp_path / "a.label", np.uint32)
    assert raw.tolist() == [10 + (3 << 16), 40, 254 + (65535 << 16)]
    s, i = K.read_label(tmp_path / "a.label", 3)
    assert s.tolist() == sem.tolist() and i.tolist() == inst.tolist()


def test_poses_calib_times_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    poses = np.tile(np.eye(4), (5, 1, 1))
    for m in poses:  # random rotations (QR of a Gaussian, det +1) and translations
        q, r = np.linalg.qr(rng.normal(size=(3, 3)))
        q = q * np.sign(np.diag(r))
        m[:3, :3] = q if np.linalg.det(q) > 0 else -q
        m[:3, 3] = rng.normal(size=3) * 100
    K.write_poses(tmp_path / "poses.txt", poses)
    assert np.allclose(K.read_poses(tmp_path / "poses.txt", 5), poses, rtol=1e-11)
    calib = kitti_calib_matrices()
    K.write_calib(tmp_path / "calib.txt", calib)
    back = K.read_calib(tmp_path / "calib.txt")
    assert sorted(back) == ["P0", "P1", "P2", "P3", "Tr"]
    assert np.allclose(back["Tr"], calib["Tr"], rtol=1e-11)
    K.write_times(tmp_path / "times.txt", np.arange(4) * 0.1)
    assert np.allclose(K.read_times(tmp_path / "times.txt"), [0, 0.1, 0.2, 0.3])


def test_bin_size_not_multiple_of_16(tmp_path):
    (tmp_path / "bad.bin").write_bytes(b"\0" * 20)
    with pytest.raises(K.KittiFormatError, match=r"bad\.bin.*not a multiple of 16"):
        K.read_scan(tmp_path / "bad.bin")


def test_nan_coordinates(tmp_path):
    pts = np.zeros((3, 4), np.float32)
    pts[1, 2] = np.nan
    pts.tofile(tmp_path / "nan.bin")
    with pytest.raises(K.KittiFormatError, match=r"nan\.bin: 1 point"):
        K.read_scan(tmp_path / "nan.bin")


def test_missing_files_name_the_file(tmp_path):
    with pytest.raises(K.KittiFormatError, match=r"nope\.bin"):
        K.read_scan(tmp_path / "nope.bin")
    with pytest.raises(K.KittiFormatError, match=r"nope\.label"):
        K.read_label(tmp_path / "nope.label")


def test_label_count_mismatch(tmp_path):
    K.write_label(tmp_path / "a.label", np.zeros(5, np.uint32), np.zeros(5, np.uint32))
    with pytest.raises(K.KittiFormatError, match=r"a\.label: 5 labels but the scan has 6"):
        K.read_label(tmp_path / "a.label", 6)


def test_pose_line_with_wrong_value_count(tmp_path):
    (tmp_path / "poses.txt").write_text("1 0 0 0 0 1 0 0 0 0 1 0\n1 0 0 0 0 1 0 0 0 0 1\n")
    with pytest.raises(K.KittiFormatError, match=r"poses\.txt:2: expected 12 values"):
        K.read_poses(tmp_path / "poses.txt")


def test_fewer_poses_than_scans(tmp_path):
    (tmp_path / "poses.txt").write_text("1 0 0 0 0 1 0 0 0 0 1 0\n")
    with pytest.raises(K.KittiFormatError, match="1 poses but the sequence has 3 scans"):
        K.read_poses(tmp_path / "poses.txt", 3)


def test_calib_without_tr(tmp_path):
    (tmp_path / "calib.txt").write_text("P0: " + " ".join(["0"] * 12) + "\n")
    with pytest.raises(K.KittiFormatError, match="no 'Tr'"):
        K.read_calib(tmp_path / "calib.txt")


def test_parse_sequences():
    assert parse_sequences("00-03") == ["00", "01", "02", "03"]
    assert parse_sequences("08") == ["08"]
    assert parse_sequences("00,02,08") == ["00", "02", "08"]
    assert parse_sequences("8,00-01,1") == ["08", "00", "01"]
    for bad in ("a", "05-02", "", "1-2-3"):
        with pytest.raises(ValueError):
            parse_sequences(bad)


def test_sequence_frames_detects_a_gap(tmp_path):
    seq = K.Sequence(tmp_path, "00")
    for f in (0, 1, 3):
        K.write_scan(seq.scan_path(f), np.zeros((1, 4), np.float32))
    with pytest.raises(K.KittiFormatError, match=r"missing in the middle.*\[2\]"):
        seq.frames()


def test_real_kitti_scan_reads():
    pts = K.read_scan(real_path("kitti_object_004139.bin"))
    assert pts.shape == (123266, 4)
    assert 0.0 <= pts[:, 3].min() and pts[:, 3].max() <= 1.0


def test_poses_and_tr_that_are_not_rigid_transforms_are_refused(tmp_path):
    """Item 10 of the data-safety issue: an all-zero pose line or a singular Tr raised a
    LinAlgError deep in fusion; now one line naming the file and line."""
    good = np.tile(np.eye(4), (3, 1, 1))
    K.write_poses(tmp_path / "poses.txt", good)
    lines = (tmp_path / "poses.txt").read_text().splitlines()
    lines[1] = " ".join(["0"] * 12)
    (tmp_path / "poses.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(K.KittiFormatError, match=r"poses.txt:2: the pose is not a rigid transform"):
        K.read_poses(tmp_path / "poses.txt")
    mirror = np.diag([1.0, 1.0, -1.0, 1.0])  # orthonormal, but a reflection
    scaled = np.diag([2.0, 2.0, 2.0, 1.0])
    for bad in (mirror, scaled, np.zeros((4, 4))):
        calib = {"P0": np.eye(4) * 0.0 + np.diag([700.0, 700.0, 1.0, 1.0]), "Tr": bad}
        K.write_calib(tmp_path / "calib.txt", calib)
        with pytest.raises(K.KittiFormatError, match=r"calib.txt:2: the Tr .* is not a rigid transform"):
            K.read_calib(tmp_path / "calib.txt")
    # a rotation written to 12 digits, and a projection P0 that is no rotation, pass
    c, s = np.cos(0.3), np.sin(0.3)
    rot = np.array([[c, -s, 0, 1.0], [s, c, 0, 2.0], [0, 0, 1, 3.0], [0, 0, 0, 1]])
    K.write_calib(tmp_path / "calib.txt", {"P0": np.diag([700.0, 700.0, 1.0, 1.0]), "Tr": rot})
    np.testing.assert_allclose(K.read_calib(tmp_path / "calib.txt")["Tr"], rot, atol=1e-11)


def test_a_scan_behind_a_symlink_loop_is_named(tmp_path):
    loop = tmp_path / "000000.bin"
    loop.symlink_to(loop)
    with pytest.raises(K.KittiFormatError, match=r"000000.bin: cannot read the scan file"):
        K.read_scan(loop)
    lab = tmp_path / "000000.label"
    lab.mkdir()
    with pytest.raises(K.KittiFormatError, match=r"000000.label: cannot read the label file"):
        K.read_label(lab)


def test_a_second_tr_or_a_pose_a_planet_away_is_refused(tmp_path):
    """Issue 33, item 5: two `Tr:` lines were read silently as the last one; a pose 1e30 m
    away was accepted (fused points there are lost in float32 rounding)."""
    tr = "Tr: 1 0 0 0 0 1 0 0 0 0 1 0\n"
    (tmp_path / "calib.txt").write_text(tr + "Tr: 1 0 0 5 0 1 0 0 0 0 1 0\n")
    with pytest.raises(K.KittiFormatError, match=r"calib.txt:2: a second 'Tr' entry \(the first is on line 1\)"):
        K.read_calib(tmp_path / "calib.txt")
    (tmp_path / "poses.txt").write_text("1 0 0 0 0 1 0 0 0 0 1 0\n1 0 0 1e30 0 1 0 0 0 0 1 0\n")
    with pytest.raises(K.KittiFormatError, match=r"poses.txt:2: the pose is 1e\+30 m from the first scan"):
        K.read_poses(tmp_path / "poses.txt")
    (tmp_path / "poses.txt").write_text("1 0 0 0 0 1 0 0 0 0 1 0\n1 0 0 600 0 1 0 0 0 0 1 -250\n")
    assert K.read_poses(tmp_path / "poses.txt")[1, 0, 3] == 600.0  # a real drive's distances pass


def test_a_folder_or_a_link_loop_where_a_file_belongs_is_named_as_such(tmp_path):
    """Issue 33, items 11 and 13: a folder named 000001.bin gave '4132 labels but the scan
    has 256 points' (the folder's size), a scan linked to itself a traceback, poses.txt as a
    folder 'does not exist'."""
    vel = tmp_path / "sequences" / "00" / "velodyne"
    vel.mkdir(parents=True)
    K.write_scan(vel / "000000.bin", np.zeros((3, 4), np.float32))
    (vel / "000001.bin").mkdir()
    seq = K.Sequence(tmp_path, "00")
    with pytest.raises(K.KittiFormatError, match=r"000001.bin: not a scan file \(a folder"):
        seq.frames()
    (vel / "000001.bin").rmdir()
    (vel / "000001.bin").symlink_to(vel / "000001.bin")
    with pytest.raises(K.KittiFormatError, match=r"000001.bin: not a scan file .*link loop"):
        seq.frames()
    (tmp_path / "poses.txt").mkdir()
    with pytest.raises(K.KittiFormatError, match=r"poses.txt: not a file \(a folder\?\)"):
        K.read_poses(tmp_path / "poses.txt")
