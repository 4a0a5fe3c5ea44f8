"""The fast paths of issue 13 give what the slower library calls they replace give, on real scans."""

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from conftest import DATA, EXAMPLE
from ctbmd.io import array_to_image, grid_reference_image, image_to_array, labels_on_input_grid, read_ct
from ctbmd.masks import distance_mm, label_boxes, label_values
from ctbmd.roi import measure_level
from ctbmd.segment.builtin.grid import boxes_on_ct_grid, labels_to_ct_grid, resampling_matrix, to_working_grid
from ctbmd.types import SpineSegmentation

LIDC = DATA / "lidc_idri_0001_chest" / "dicom"


def _sitk_nearest(labels, src_grid, dst_grid):
    image = array_to_image(labels, src_grid)
    ref = grid_reference_image(dst_grid, sitk.sitkUInt8)
    return image_to_array(sitk.Resample(image, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8))


def test_working_grid_labels_return_to_the_ct_grid_as_simpleitk_puts_them():
    # random labels on the working grid of two real scans: every CT voxel takes the same value
    for path in (EXAMPLE / "ct.nii.gz", LIDC):
        ct = read_ct(path)
        work = to_working_grid(ct)
        labels = np.random.default_rng(0).integers(0, 30, work.hu.shape).astype(np.uint8)
        ours = labels_to_ct_grid(labels, work.grid, ct)
        assert ours.shape == ct.hu.shape
        assert np.array_equal(ours, _sitk_nearest(labels, work.grid, ct.grid))
        # sparse labels: the values that reach the CT grid are found without making the map
        sparse_labels = np.where(labels > 26, labels, 0).astype(np.uint8)
        sparse_labels[::7, ::5, ::3] = 0
        on_ct = labels_to_ct_grid(sparse_labels, work.grid, ct)
        assert boxes_on_ct_grid(sparse_labels, work.grid, ct) == label_boxes(on_ct)
        one = np.zeros_like(labels)
        one[5, 5, 1] = 9  # a single working voxel may fall between the CT's thick slices
        one[40:47, 30:33, 20:29] = 4
        assert boxes_on_ct_grid(one, work.grid, ct) == label_boxes(labels_to_ct_grid(one, work.grid, ct))


def test_labels_go_back_to_the_stored_grid_exactly():
    # the example is stored RAS, the LIDC series LPS: both come back voxel for voxel
    for path in (EXAMPLE / "ct.nii.gz", LIDC):
        ct = read_ct(path)
        labels = np.random.default_rng(1).integers(0, 30, ct.hu.shape).astype(np.uint8)
        ours = labels_on_input_grid(labels, ct)
        ref = grid_reference_image(ct.info.input_grid, sitk.sitkUInt8)
        theirs = sitk.Resample(array_to_image(labels, ct.grid), ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                               sitk.sitkUInt8)
        assert np.array_equal(sitk.GetArrayFromImage(ours), sitk.GetArrayFromImage(theirs))
        assert ours.GetOrigin() == ct.info.input_grid.origin_lps_mm
        assert ours.GetDirection() == ct.info.input_grid.direction


def test_resampling_matrix_smooths_then_interpolates():
    # thick input (3 mm): plain linear interpolation, rows sum to 1
    w = resampling_matrix(10, 3.0, 15, -1.0 / 6.0).toarray()
    assert np.allclose(w.sum(axis=1), 1.0)
    x = np.arange(10.0)
    assert np.allclose(w @ x, np.clip(-1.0 / 6.0 + np.arange(15) * 2.0 / 3.0, 0, 9), atol=1e-5)
    # thin input (0.8 mm): a Gaussian of sigma 0.6 mm, then linear interpolation
    w = resampling_matrix(50, 0.8, 20, 0.75).toarray()
    assert np.allclose(w.sum(axis=1), 1.0)
    impulse = np.zeros(50)
    impulse[25] = 1.0
    smoothed = ndi.gaussian_filter1d(impulse, 0.6 / 0.8, mode="nearest", truncate=12.0)
    pos = 0.75 + np.arange(20) * 2.5
    assert np.allclose(w @ impulse, np.interp(pos, np.arange(50), smoothed), atol=2e-3)


def test_working_grid_of_a_thin_slice_ct_stays_close_to_gaussian_then_linear():
    ct = read_ct(LIDC)  # 0.70 x 0.70 x 2.5 mm: smoothed in-plane, interpolated along z
    work = to_working_grid(ct)
    sigma = [max(0.0, (2.0 - s) / 2.0) for s in ct.grid.spacing_mm]
    image = sitk.SmoothingRecursiveGaussian(array_to_image(ct.hu, ct.grid), [max(s, 1e-3) for s in sigma])
    ref = image_to_array(sitk.Resample(image, grid_reference_image(work.grid, sitk.sitkFloat32), sitk.Transform(),
                                       sitk.sitkLinear, -1024.0, sitk.sitkFloat32))
    inside = work.body
    assert np.median(np.abs(work.hu - ref)[inside]) < 0.5  # HU
    assert np.percentile(np.abs(work.hu - ref)[inside], 99) < 5.0


def test_distance_and_boxes_agree_with_scipy():
    ct = read_ct(EXAMPLE / "ct.nii.gz")
    body = ct.hu > -400
    d = distance_mm(body, ct.spacing_mm)
    assert np.allclose(d, ndi.distance_transform_edt(body, sampling=ct.spacing_mm), atol=1e-4)
    labels = np.zeros(ct.hu.shape, np.uint8)
    labels[10:20, 30:35, 40:60] = 20
    labels[50, 60, 70] = 3
    assert label_values(labels) == {3, 20}
    assert label_boxes(labels)[20] == (slice(10, 20), slice(30, 35), slice(40, 60))


def test_measure_level_in_its_box_equals_the_whole_volume_result():
    ct = read_ct(EXAMPLE / "ct.nii.gz")
    ref = sitk.ReadImage(str(EXAMPLE / "vertebrae_pp_refined.nii.gz"))
    ref = sitk.Resample(ref, array_to_image(ct.hu, ct.grid), sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    labels = image_to_array(ref).astype(np.uint8)
    labels = np.where(labels == 20, 20, 0).astype(np.uint8)  # L1 in the pp_refined map is 20 = L1 (VerSe)
    seg = SpineSegmentation(labels=labels, body=None, levels=("L1",), backend="labels")
    one = measure_level(ct, seg, "L1")
    m, roi, crop = one.measurement, one.roi, one.crop
    full = labels == 20
    idx = np.nonzero(full)
    assert np.allclose(m.centroid_lps_mm, ct.index_to_lps(np.array([i.mean() for i in idx])), atol=0.01)
    assert m.roi_voxels == int(roi.sum()) > 100
    assert np.isclose(m.hu_mean, float(ct.hu[crop][roi].mean()))


def test_working_grid_of_a_thick_slice_ct_is_simpleitk_linear_resampling():
    # 3 mm: no smoothing; every working voxel, edges and outside-the-CT air included, as SimpleITK gives it
    ct = read_ct(EXAMPLE / "ct.nii.gz")
    work = to_working_grid(ct)
    ref = image_to_array(sitk.Resample(array_to_image(ct.hu, ct.grid), grid_reference_image(work.grid, sitk.sitkFloat32),
                                       sitk.Transform(), sitk.sitkLinear, -1024.0, sitk.sitkFloat32))
    assert np.abs(work.hu - ref).max() < 0.01


def test_prominent_peaks_are_scipy_find_peaks():
    # random walks with flat runs (rounded), plateaus at the ends, and a real disc signal
    from scipy.signal import find_peaks

    from ctbmd.segment.builtin.column import find_column
    from ctbmd.segment.builtin.discs import disc_profiles, prominent_peaks

    rng = np.random.default_rng(3)
    signals = [np.round(np.cumsum(rng.normal(size=n)), 1) for n in rng.integers(3, 400, 200)]
    signals += [np.array([1.0, 1.0, 2.0, 2.0, 2.0, 1.0, 3.0, 3.0]), np.zeros(5), np.array([0.0, 1.0])]
    ct = read_ct(EXAMPLE / "ct.nii.gz")
    profile = disc_profiles(find_column(to_working_grid(ct))).signal
    signals.append(np.nan_to_num(profile, nan=float(np.nanmin(profile))))
    for sig in signals:
        for floor in (0.0, 0.3, 2.0):
            idx, props = find_peaks(sig, prominence=floor)
            ours, prom = prominent_peaks(sig, floor)
            assert np.array_equal(ours, idx)
            assert np.allclose(prom, props["prominences"], rtol=0, atol=1e-12)
    assert len(prominent_peaks(signals[-1], 0.3)[0]) >= 5  # the example's discs are found


def test_mask_shortcuts_equal_the_scipy_calls_they_replace():
    # per-plane hole filling, the separable box closing and the edge-replicating shift, on random masks
    from ctbmd.masks import box_closing, plane_holes
    from ctbmd.segment.builtin.column import _shift_xy

    rng = np.random.default_rng(4)
    for shape in [(40, 30, 12), (5, 6, 7), (1, 4, 3)]:
        for p in (0.2, 0.5, 0.8):
            m = rng.random(shape) < p
            holes = np.stack([ndi.binary_fill_holes(m[:, :, k]) & ~m[:, :, k] for k in range(shape[2])], axis=2)
            assert np.array_equal(plane_holes(m), holes)
            assert np.array_equal(box_closing(m), ndi.binary_closing(m, structure=np.ones((3, 3, 3))))
    a = np.asfortranarray(rng.normal(size=(7, 5, 3)))
    for dx in range(-9, 10):
        for dy in range(-7, 8):
            xs, ys = np.clip(np.arange(7) + dx, 0, 6), np.clip(np.arange(5) + dy, 0, 4)
            assert np.array_equal(_shift_xy(a, dx, dy), a[xs][:, ys])


def test_labels_go_back_to_every_stored_orientation(tmp_path):
    # all 48 axis permutations and flips: the numpy path equals SimpleITK's nearest-neighbour resampling
    import itertools

    rng = np.random.default_rng(5)
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product([1, -1], repeat=3):
            arr = rng.normal(0, 300, (20, 24, 28)).astype(np.int16)
            arr[0, 0, 0] = -1000
            image = sitk.GetImageFromArray(arr)
            direction = np.zeros((3, 3))
            direction[list(perm), [0, 1, 2]] = signs
            image.SetDirection(direction.ravel().tolist())
            image.SetSpacing((1.7, 1.9, 2.5))
            image.SetOrigin((10.0, -20.0, 30.0))
            sitk.WriteImage(image, str(tmp_path / "ct.nii.gz"))
            ct = read_ct(tmp_path / "ct.nii.gz")
            labels = rng.integers(0, 30, ct.hu.shape).astype(np.uint8)
            ours = labels_on_input_grid(labels, ct)
            ref = sitk.Resample(array_to_image(labels, ct.grid),
                                grid_reference_image(ct.info.input_grid, sitk.sitkUInt8),
                                sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
            assert np.array_equal(sitk.GetArrayFromImage(ours), sitk.GetArrayFromImage(ref))
            assert ours.GetSize() == image.GetSize() and np.allclose(ours.GetDirection(), image.GetDirection())
            assert np.allclose(ours.GetOrigin(), image.GetOrigin())


def test_cross_opening_is_scipy_binary_opening():
    from ctbmd.masks import cross_opening

    rng = np.random.default_rng(6)
    for shape in [(30, 25, 20), (7, 6, 5), (1, 5, 4), (2, 1, 3)]:
        for p in (0.3, 0.6, 0.9):
            m = rng.random(shape) < p
            if min(shape) > 5:
                m = ndi.binary_opening(m) | (rng.random(shape) < 0.1)
            for n in (1, 2):
                assert np.array_equal(cross_opening(m, n), ndi.binary_opening(m, iterations=n))


def test_builtin_segmentation_knows_the_boxes_of_its_labels():
    # the boxes mapped from the working grid are those a pass over the full label map finds
    from ctbmd.segment import segment

    for path in (EXAMPLE / "ct.nii.gz", LIDC):
        ct = read_ct(path)
        seg = segment(ct)
        assert seg.known_boxes is not None and seg.known_boxes == label_boxes(seg.labels)
