import numpy as np
import pytest

from m2skd.common.geometry import PolarGrid, camera_poses, cart2polar, lidar_poses, transform_points
from m2skd.synth.config import kitti_calib_matrices


def test_lidar_pose_convention_hand_case():
    # KITTI axes: camera z forward, x right, y down; velodyne x forward, y left, z up.
    tr = np.eye(4)
    tr[:3, :3] = [[0, -1, 0], [0, 0, -1], [1, 0, 0]]
    cam = np.eye(4)
    cam[:3, 3] = [0.0, 0.0, 2.0]  # camera moved 2 m forward
    t = lidar_poses(cam[None], tr)[0]
    assert np.allclose(t[:3, 3], [2.0, 0.0, 0.0])  # so the LiDAR moved 2 m along its x
    assert np.allclose(t[:3, :3], np.eye(3))
    # and a camera turning left (about its -y axis) is a LiDAR turning left about +z
    a = 0.3
    cam = np.eye(4)
    cam[:3, :3] = [[np.cos(a), 0, -np.sin(a)], [0, 1, 0], [np.sin(a), 0, np.cos(a)]]
    t = lidar_poses(cam[None], tr)[0]
    assert np.allclose(t[:3, :3], [[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])


def test_camera_poses_inverts_lidar_poses():
    tr = kitti_calib_matrices()["Tr"]
    rng = np.random.default_rng(0)
    m = np.eye(4)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    m[:3, :3] = q * np.sign(np.linalg.det(q))
    m[:3, 3] = rng.normal(size=3)
    assert np.allclose(lidar_poses(camera_poses(m[None], tr), tr)[0], m)


def test_transform_points_keeps_remission():
    m = np.eye(4)
    m[:3, 3] = [1, 2, 3]
    out = transform_points(np.array([[0, 0, 0, 0.5]], np.float32), m)
    assert out.tolist() == [[1, 2, 3, 0.5]]


def test_voxel_index_of_hand_placed_points():
    # published spacing (max - min) / (size - 1): rho 10/9 m, phi 2 pi/3, z 4 m
    g = PolarGrid(shape=(10, 4, 2), min_bound=(0.0, -np.pi, -2.0), max_bound=(10.0, np.pi, 2.0))
    pts = np.array([
        [0.5, 0.0, -1.0],  # rho 0.45 -> 0; phi 0: pi / (2 pi/3) = 1.5 -> 1; z 1/4 -> 0
        [0.0, 3.5, 1.0],  # rho 3.15 -> 3; phi pi/2: 1.5 pi / (2 pi/3) = 2.25 -> 2; z 3/4 -> 0
        [-2.5, -0.001, 0.0],  # rho 2.25 -> 2; phi just above -pi -> 0; z 2/4 -> 0
        [100.0, 0.0, 9.0],  # outside: clipped onto the upper bounds, the last rho and z cells
    ])
    assert g.voxel_index(pts).tolist() == [[0, 1, 0], [3, 2, 0], [2, 0, 0], [9, 1, 1]]


def test_point_features_are_offsets_inside_the_cell():
    g = PolarGrid(shape=(48, 36, 8))
    rng = np.random.default_rng(1)
    pts = np.concatenate([rng.uniform(-34, 34, (500, 2)), rng.uniform(-3, 1, (500, 1)), rng.random((500, 1))], 1)
    feats, _idx = g.point_features(pts)
    assert feats.shape == (500, 9)
    assert (np.abs(feats[:, :3]) <= g.cell_size / 2 + 1e-5).all()
    assert np.allclose(feats[:, 3:6], cart2polar(pts[:, :3]), atol=1e-5)
    assert np.allclose(feats[:, 6:8], pts[:, :2], atol=1e-5) and np.allclose(feats[:, 8], pts[:, 3])


def test_bad_grid_is_refused():
    with pytest.raises(ValueError):
        PolarGrid(shape=(0, 1, 1))
    with pytest.raises(ValueError):
        PolarGrid(min_bound=(5.0, 0.0, 0.0), max_bound=(1.0, 1.0, 1.0))
