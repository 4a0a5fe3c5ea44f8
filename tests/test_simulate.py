"""Known-truth phantoms: the truth matches the request, and ctbmd measures it.

Thresholds here are set to fail when calibration or ROI placement regresses:
the former two-point air/fat calibration read these phantoms ~15-20% high, and
an ROI that took in the spinal canal read 5-6 HU low.
"""

import json

import numpy as np
import pytest

from conftest import EXAMPLE, run_cli
from ctbmd.errors import UsageError
from ctbmd.materials import qct_pro_line
from ctbmd.simulate import PhantomSpec, parse_bmd, shift_trabecular_hu, simulate_phantom
from ctbmd.types import VERSE_LABELS

FAST = dict(pixel_mm=1.5, slice_thickness_mm=3.0)


def test_truth_matches_the_request():
    spec = PhantomSpec(bmd_mg_cm3={"L1": 95, "L2": 100}, kvp=100, noise_hu=15, seed=3, **FAST)
    ph = simulate_phantom(spec)
    t = {lv["level"]: lv for lv in ph.truth["levels"]}
    assert [lv["level"] for lv in ph.truth["levels"]] == ["T10", "T11", "T12", "L1", "L2", "L3", "L4", "L5"]
    assert t["L1"]["bmd_mg_cm3"] == 95 and t["L2"]["bmd_mg_cm3"] == 100
    # unset levels follow the mean of the set ones within +-5%
    assert all(0.95 * 97.5 - 1e-6 <= t[lv]["bmd_mg_cm3"] <= 1.05 * 97.5 + 1e-6 for lv in ("T12", "L3", "L5"))
    assert ph.truth["settings"]["kvp"] == 100 and ph.truth["settings"]["noise_hu"] == 15
    # labels: every level present in VerSe numbering, plus the sacrum, ordered top to bottom
    present = set(np.unique(ph.labels)) - {0}
    assert {VERSE_LABELS[lv] for lv in t} | {26} == present
    zs = [t[lv]["label_centroid_lps_mm"][2] for lv in ("T10", "T11", "T12", "L1", "L2", "L3", "L4", "L5")]
    assert all(a > b for a, b in zip(zs, zs[1:]))
    # the added noise has the requested SD (air outside the body, unclipped part)
    air = ph.hu[:8, :8, :].astype(float)
    assert abs(air.std() - 15) < 1.0
    # same spec, same phantom
    again = simulate_phantom(spec)
    assert np.array_equal(again.hu, ph.hu) and again.truth == ph.truth


def test_noise_free_trabecular_hu_and_qct_equivalent():
    spec = PhantomSpec(bmd_mg_cm3={"L1": 150}, noise_hu=0, marrow_fat_fraction=0.0, beam_hardening=False,
                       psf_fwhm_mm=0.0, seed=5, **FAST)
    ph = simulate_phantom(spec)
    lv = next(v for v in ph.truth["levels"] if v["level"] == "L1")
    # with fat-free marrow the QCT-equivalent equals the K2HPO4 set
    assert lv["qct_equivalent_mg_cm3"] == pytest.approx(150.0, abs=0.5)
    energy = ph.truth["scan"]["effective_energy_kev"]
    sigma, beta = qct_pro_line(energy)
    assert lv["trabecular_hu"] == pytest.approx(150.0 * float(sigma) + float(beta), abs=1.0)
    # the voxels at the body centre read that HU (no noise, no blur, no cupping)
    idx = np.round(np.linalg.solve(ph.grid.affine_lps[:3, :3],
                                   np.subtract(lv["body_centre_lps_mm"], ph.grid.affine_lps[:3, 3]))).astype(int)
    patch = ph.hu[idx[0] - 3:idx[0] + 4, idx[1] - 3:idx[1] + 4, idx[2] - 1:idx[2] + 2]
    assert abs(float(np.median(patch)) - lv["trabecular_hu"]) <= 1.0
    # marrow fat lowers the QCT-equivalent value (single-energy QCT's known error)
    fatty = simulate_phantom(PhantomSpec(**{**spec.__dict__, "marrow_fat_fraction": 0.5}))
    lv_f = next(v for v in fatty.truth["levels"] if v["level"] == "L1")
    assert lv_f["bmd_mg_cm3"] == 150 and lv_f["qct_equivalent_mg_cm3"] < 150 - 20


def test_bad_settings_are_usage_errors():
    with pytest.raises(UsageError):
        parse_bmd("L1=95,X=3")
    with pytest.raises(UsageError):
        simulate_phantom(PhantomSpec(kvp=90))
    with pytest.raises(UsageError):
        simulate_phantom(PhantomSpec(bmd_mg_cm3={"C3": 100}))
    rc, _, err = run_cli("simulate", "--out", "unused", "--bmd", "L1=abc")
    assert rc == 2 and "L1=abc" in err and "Traceback" not in err


@pytest.fixture(scope="module")
def small_cohort(phantom_cohort):
    """(truth, result) pairs of the three phantoms of ``phantom_cohort``."""
    root = phantom_cohort
    return [(json.loads((root / name / "truth.json").read_text()),
             json.loads((root / "results" / name / "result.json").read_text())) for name in ("a", "b", "c")]


def test_cohort_levels_are_found_and_named(small_cohort):
    for truth, result in small_cohort:
        t = {lv["level"]: lv for lv in truth["levels"]}
        found = {lv["level"]: lv for lv in result["levels"]}
        assert {"T12", "L1", "L2", "L3", "L4", "L5"} <= set(found)
        for name, lv in found.items():
            err = np.linalg.norm(np.subtract(lv["centroid_lps_mm"], t[name]["label_centroid_lps_mm"]))
            assert err <= 10.0, (name, err)


def test_cohort_hu_and_bmd_match_the_truth(small_cohort):
    errors = []
    for truth, result in small_cohort:
        t = {lv["level"]: lv for lv in truth["levels"]}
        for lv in result["levels"]:
            if lv["level"] in ("L1", "L2", "L3", "L4") and not lv["flags"]:
                # ROI placement: near the noise-free truth less the central cupping deficit
                hu = t[lv["level"]]["trabecular_hu"]
                expected = hu - truth["scan"]["cupping_fraction"] * (1000.0 + hu)
                tol = 4.0 + 0.25 * truth["settings"]["noise_hu"]  # 3 mm slices: endplate partial volume
                assert abs(lv["trabecular_hu_median"] - expected) <= tol, (lv["level"], lv["trabecular_hu_median"],
                                                                             expected)
        p = result["patient"]
        ref = np.mean([t[u]["qct_equivalent_mg_cm3"] for u in p["levels_used"]])
        errors.append(p["bmd_mg_cm3"] - ref)
        assert abs(p["bmd_mg_cm3"] - ref) <= 8.0, (p, ref)
    assert np.mean(np.abs(errors)) <= 5.0, errors


def test_real_anatomy_hu_shift_is_recovered(tmp_path):
    """Shift L1-L4 trabecular HU of the real example by +40 and -40 HU; ctbmd sees the change within 2 HU."""
    from ctbmd.io import array_to_image, read_ct, read_label_map, write_image_atomic
    from ctbmd.segment.labelmaps import to_verse

    ct = read_ct(EXAMPLE / "ct.nii.gz")
    body = read_label_map(EXAMPLE / "vertebral_body_and_discs.nii.gz", ct) == 1
    levels = to_verse(read_label_map(EXAMPLE / "vertebrae_total.nii.gz", ct), "total")
    bodies = body & np.isin(levels, [VERSE_LABELS[lv] for lv in ("L1", "L2", "L3", "L4")])
    medians = {}
    for delta in (0.0, 40.0, -40.0):
        path = tmp_path / f"s{delta:+.0f}.nii.gz"
        write_image_atomic(array_to_image(shift_trabecular_hu(ct.hu, bodies, ct.spacing_mm, delta), ct.grid), path)
        rc, _, se = run_cli("run", path, "--out", tmp_path / f"o{delta:+.0f}", "--labels",
                            EXAMPLE / "vertebrae_total.nii.gz", "--quiet")
        assert rc == 0, se
        res = json.loads((tmp_path / f"o{delta:+.0f}" / "result.json").read_text())
        medians[delta] = {lv["level"]: lv["trabecular_hu_median"] for lv in res["levels"]}
    for delta in (40.0, -40.0):
        for name in ("L1", "L2", "L3", "L4"):
            assert abs(medians[delta][name] - medians[0.0][name] - delta) <= 2.0, (delta, name)
    # the rest of the scan is untouched
    assert medians[40.0]["T12"] == medians[0.0]["T12"]


# --- chest field of view and variant anatomy ---------------------------------------------------------

from scipy import ndimage as ndi  # noqa: E402

from ctbmd.simulate import chest_wall, thorax  # noqa: E402
from ctbmd.simulate import anatomy as an  # noqa: E402

CHEST = dict(fov="chest", pixel_mm=2.0, slice_thickness_mm=3.0, noise_hu=0.0)
THORACIC = [f"T{i}" for i in range(1, 13)]


def _index(ph, p_lps):
    """Voxel index (i, j, k) nearest to an LPS point of a phantom (identity direction)."""
    return np.round(np.linalg.solve(ph.grid.affine_lps[:3, :3],
                                    np.subtract(p_lps, ph.grid.affine_lps[:3, 3]))).astype(int)


def _coords(ph):
    """LPS mm of the voxel centres along x, y, z."""
    o, s = ph.grid.origin_lps_mm, ph.grid.spacing_mm
    return [o[i] + s[i] * np.arange(ph.hu.shape[i]) for i in range(3)]


@pytest.fixture(scope="module")
def chest():
    return simulate_phantom(PhantomSpec(seed=7, **CHEST))


def test_chest_levels_ribs_and_labels(chest):
    t = {lv["level"]: lv for lv in chest.truth["levels"]}
    assert [lv["level"] for lv in chest.truth["levels"]] == ["C6", "C7", *THORACIC, "L1", "L2"]
    assert [lv for lv, v in t.items() if v["ribs"]] == THORACIC
    assert all(t[lv]["rib_length_mm"] > 0 for lv in THORACIC) and t["C7"]["rib_length_mm"] is None
    # the floating ribs are the short ones; the first rib is shorter than the sixth
    assert t["T12"]["rib_length_mm"] < t["T11"]["rib_length_mm"] < t["T6"]["rib_length_mm"]
    assert t["T1"]["rib_length_mm"] < t["T6"]["rib_length_mm"]
    present = set(np.unique(chest.labels)) - {0}
    assert {VERSE_LABELS[lv] for lv in ["C7", *THORACIC, "L1"]} <= present and 26 not in present
    assert all(t[lv]["in_view"] and not t[lv]["cut_by_edge"] for lv in ["C7", *THORACIC, "L1"])
    zs = [t[lv]["label_centroid_lps_mm"][2] for lv in ["C7", *THORACIC, "L1"]]
    assert all(a > b for a, b in zip(zs, zs[1:]))
    assert chest.truth["variant"]["fov"] == "chest" and chest.truth["variant"]["sacrum"] is None


def test_chest_has_a_thoracic_kyphosis(chest):
    y = {lv["level"]: lv["body_centre_lps_mm"][1] for lv in chest.truth["levels"]}
    apex = max(THORACIC[4:10], key=y.get)  # T5-T10
    assert y[apex] - y["T1"] > 35.0, y  # the body centre moves posteriorly from T1 ...
    assert y[apex] - y["L1"] > 15.0, y  # ... and anteriorly again toward L1


def test_chest_lungs_lie_beside_every_thoracic_body(chest):
    xs, ys, zs = _coords(chest)
    spacing = chest.grid.spacing_mm
    for lv in chest.truth["levels"]:
        if not lv["level"].startswith("T"):
            continue
        c = lv["body_centre_lps_mm"]
        half_w = thorax.body_size(lv["level"])[1]
        kz = np.abs(zs - c[2]) <= lv["body_height_mm"] / 4.0
        ky = (ys > c[1] - 25.0) & (ys < c[1] + 45.0)
        for side in (-1, 1):
            kx = (side * (xs - c[0]) > half_w) & (side * (xs - c[0]) < half_w + 60.0)
            lung = chest.hu[np.ix_(kx, ky, kz)] < -500
            assert lung.sum() * np.prod(spacing) > 200.0, (lv["level"], side, lung.sum())


def test_chest_rib_heads_articulate_at_the_right_levels():
    spec = PhantomSpec(seed=3, **CHEST)
    levels = spec.levels()
    anat = thorax.draw_chest_anatomy(np.random.default_rng(3), levels, None, spec.rib_levels())
    lay, verts = anat.chest, anat.vertebrae
    pitch = (lay.z_level["T1"] - lay.z_level["T12"]) / 11.0
    sternum_x = chest_wall._sternal_half_width
    for number, lv in enumerate(THORACIC, start=1):
        i = levels.index(lv)
        vb = verts[i]
        rib = chest_wall.chest_rib(lay, verts, i, number, 1, thorax.transverse_reach(lv), pitch, None)
        w = float((rib.bone[0] - vb.centre) @ vb.frame[2])  # head, along the column from the body centre
        if 2 <= number <= 9:  # demifacets: at the disc with the vertebra above
            up = verts[i - 1]
            gap = float(np.linalg.norm(up.centre - up.frame[2] * up.height / 2
                                       - vb.centre - vb.frame[2] * vb.height / 2))
            assert vb.height / 2 < w < vb.height / 2 + gap, (lv, w)
        else:  # T1, T10-T12: on the own body
            assert abs(w) < vb.height / 2, (lv, w)
        if number <= 7:  # true ribs: cartilage reaches the sternum
            end = rib.cartilage[-1]
            assert abs(end[0] - lay.at("x_spine", end[2])) <= sternum_x(lay, end[2]) + 6.0, lv
        elif number <= 10:  # false ribs: cartilage ends short of it
            end = rib.cartilage[-1]
            assert abs(end[0] - lay.at("x_spine", end[2])) > sternum_x(lay, end[2]) + 15.0, lv
        else:
            assert rib.cartilage is None
        # ribs descend anteriorly
        assert rib.bone[-1][2] < rib.bone[0][2] - 20.0


def test_thirteen_rib_pairs_add_t13():
    ph = simulate_phantom(PhantomSpec(rib_pairs=13, seed=4, **FAST))
    t = {lv["level"]: lv for lv in ph.truth["levels"]}
    assert [lv["level"] for lv in ph.truth["levels"]][:5] == ["T10", "T11", "T12", "T13", "L1"]
    assert t["T13"]["verse_label"] == 28 and t["T13"]["ribs"] and 28 in np.unique(ph.labels)
    assert 0 < t["T13"]["rib_length_mm"] < t["T12"]["rib_length_mm"]
    z = {lv: t[lv]["label_centroid_lps_mm"][2] for lv in ("T12", "T13", "L1")}
    assert z["T12"] > z["T13"] > z["L1"]
    assert ph.truth["variant"]["rib_pairs"] == 13


def _bone_beside(ph, level, lateral=(5.0, 30.0)):
    """Voxels > 300 HU just lateral of a level's transverse processes, where its rib necks run."""
    xs, ys, zs = _coords(ph)
    lv = next(v for v in ph.truth["levels"] if v["level"] == level)
    c = lv["body_centre_lps_mm"]
    reach = an.TRANSVERSE_REACH[level] * ph.truth["scan"]["anatomy"]["scale"]
    kx = (np.abs(xs - c[0]) > reach + lateral[0]) & (np.abs(xs - c[0]) < reach + lateral[1])
    ky = (ys > c[1]) & (ys < c[1] + 40.0)
    kz = np.abs(zs - c[2]) < lv["body_height_mm"] / 2.0
    return int((ph.hu[np.ix_(kx, ky, kz)] > 300).sum())


def test_eleven_rib_pairs_leave_t12_bare():
    eleven = simulate_phantom(PhantomSpec(rib_pairs=11, seed=4, noise_hu=0.0, **FAST))
    twelve = simulate_phantom(PhantomSpec(seed=4, noise_hu=0.0, **FAST))
    t = {lv["level"]: lv for lv in eleven.truth["levels"]}
    assert not t["T12"]["ribs"] and t["T12"]["rib_length_mm"] is None and t["T11"]["ribs"]
    with_ribs, without = _bone_beside(twelve, "T12"), _bone_beside(eleven, "T12")
    assert with_ribs > 100 and without < 0.05 * with_ribs, (with_ribs, without)
    # --no-t12-ribs is the same phantom
    alias = simulate_phantom(PhantomSpec(t12_ribs=False, seed=4, noise_hu=0.0, **FAST))
    assert np.array_equal(alias.hu, eleven.hu)


def test_hypoplastic_t12_ribs_end_within_the_requested_length():
    length = 25.0
    kw = dict(seed=6, noise_hu=0.0, **FAST)
    short = simulate_phantom(PhantomSpec(t12_rib_length_mm=length, **kw))
    normal = simulate_phantom(PhantomSpec(**kw))
    none = simulate_phantom(PhantomSpec(rib_pairs=11, **kw))
    t = {lv["level"]: lv for lv in short.truth["levels"]}
    assert t["T12"]["rib_length_mm"] == pytest.approx(length, abs=0.5)
    c = np.array(t["T12"]["body_centre_lps_mm"])
    xs, ys, zs = _coords(short)
    X, Y = np.meshgrid(xs - c[0], ys - c[1], indexing="ij")
    reach_xy = np.hypot(X, Y)[:, :, None]
    for ph, most in ((short, None), (normal, 80.0)):
        rib = (ph.hu.astype(float) - none.hu) > 150  # what the T12 ribs add
        assert rib.sum() > 20
        far = float(np.broadcast_to(reach_xy, rib.shape)[rib].max())
        if most is None:  # head beside the body (half-width + 2 mm), then at most `length` of rib (+ radius, blur)
            assert far <= an.BODY_SIZE["T12"][1] * 1.1 + 2.0 + length + 8.0, far
        else:
            assert far > most, far


def test_lumbarised_s1_is_an_l6_with_a_disc_above_the_sacrum():
    ph = simulate_phantom(PhantomSpec(transition="lumbarised_s1", seed=8, noise_hu=0.0, **FAST))
    t = {lv["level"]: lv for lv in ph.truth["levels"]}
    assert [lv["level"] for lv in ph.truth["levels"]][-2:] == ["L5", "L6"] and t["L6"]["verse_label"] == 25
    assert {25, 26} <= set(np.unique(ph.labels))
    assert ph.truth["variant"]["sacrum"] == "segmented"
    disc = next(d for d in ph.truth["discs"] if d["above"] == "L6")
    assert disc["below"] == "sacrum" and disc["kind"] == "normal" and disc["height_mm"] > 6.0
    i, j, k = _index(ph, disc["centre_lps_mm"])
    assert 30.0 < float(np.median(ph.hu[i - 2:i + 3, j - 2:j + 3, k])) < 140.0  # disc, not bone
    # along the column: L6 above the disc, sacrum below it
    d = np.subtract(disc["centre_lps_mm"], t["L6"]["body_centre_lps_mm"])
    d /= np.linalg.norm(d)
    assert ph.labels[i, j, k] == 0
    assert ph.labels[tuple(_index(ph, np.add(disc["centre_lps_mm"], -8.0 * d)))] == 25
    assert ph.labels[tuple(_index(ph, np.add(disc["centre_lps_mm"], 8.0 * d)))] == 26
    # --l6 is the same phantom
    alias = simulate_phantom(PhantomSpec(l6=True, seed=8, noise_hu=0.0, **FAST))
    assert np.array_equal(alias.hu, ph.hu)


def _connected(ph, a, b, y_max):
    """Whether bone (> 150 HU) of label a and label b lie in one 26-connected component, counting only
    bone anterior of ``y_max`` (LPS mm): bodies, disc space and alae, not the facet joints behind."""
    bone = (ph.hu > 150) & (_coords(ph)[1][None, :, None] < y_max)
    comp, _ = ndi.label(bone, structure=np.ones((3, 3, 3)))
    return bool(set(np.unique(comp[bone & (ph.labels == a)])) & set(np.unique(comp[bone & (ph.labels == b)])) - {0})


def test_sacralised_l5_is_fused_to_the_sacrum():
    kw = dict(seed=9, noise_hu=0.0, **FAST)
    ph = simulate_phantom(PhantomSpec(transition="sacralised_l5", **kw))
    t = {lv["level"]: lv for lv in ph.truth["levels"]}
    assert [lv["level"] for lv in ph.truth["levels"]][-1] == "L5" and t["L5"]["verse_label"] == 24
    v = ph.truth["variant"]
    assert v["transition"] == "sacralised_l5" and v["sacralised_sides"] in ("bilateral", "left", "right")
    disc = next(d for d in ph.truth["discs"] if d["above"] == "L5")
    assert disc["kind"] in ("remnant", "absent") and disc["height_mm"] < 3.0
    y_max = t["L5"]["body_centre_lps_mm"][1] + 8.0  # the posterior wall of the L5 body
    assert _connected(ph, 24, 26, y_max)
    # without the transition L5 and the sacrum are separate bones
    plain = simulate_phantom(PhantomSpec(sacrum="segmented", **kw))
    assert not _connected(plain, 24, 26, next(lv for lv in plain.truth["levels"] if lv["level"] == "L5")[
        "body_centre_lps_mm"][1] + 8.0)


def _near_line(ph, line_lps, radius):
    """Boolean mask of voxels within ``radius`` mm of a polyline (k, 3) of LPS points."""
    line = np.asarray(line_lps, float)
    fine = np.concatenate([np.linspace(p, q, 50, endpoint=False) for p, q in zip(line, line[1:])] + [line[-1:]])
    idx = np.array([_index(ph, p) for p in fine])
    idx = idx[np.all((idx >= 0) & (idx < ph.hu.shape), axis=1)]
    on_line = np.zeros(ph.hu.shape, bool)
    on_line[tuple(idx.T)] = True
    return ndi.distance_transform_edt(~on_line, sampling=ph.grid.spacing_mm) <= radius


@pytest.mark.parametrize("fov", ["chest", "abdomen"])
def test_stent_graft_reads_as_metal_inside_the_aorta(fov):
    kw = dict(seed=5, noise_hu=0.0, pixel_mm=2.0, slice_thickness_mm=3.0, fov=fov)
    ph = simulate_phantom(PhantomSpec(stent=True, **kw))
    graft = ph.truth["variant"]["stent_graft"]
    assert graft["metal"] == "nitinol" and graft["rings"] >= 3
    region = _near_line(ph, graft["centre_line_lps_mm"], graft["radius_mm"] + 3.0)
    assert int((ph.hu[region] > 1500).sum()) > 40
    # the same phantom without the stent holds nothing that bright there
    plain = simulate_phantom(PhantomSpec(**kw))
    assert int((plain.hu[region] > 1500).sum()) == 0
    if fov == "chest":  # it starts in the distal arch, above T5
        z5 = next(lv for lv in ph.truth["levels"] if lv["level"] == "T5")["body_centre_lps_mm"][2]
        assert graft["proximal_lps_mm"][2] > z5


def test_costal_cartilage_reads_as_cartilage_not_bone():
    from ctbmd.materials import hu_from_mu
    from ctbmd.simulate.physics import effective_energy_kev, material_table

    for kvp in (80, 120, 140):
        spec = PhantomSpec(kvp=kvp, fov="chest")
        energy = effective_energy_kev(kvp, 320.0)
        table, _ = material_table(energy, spec, {lv: 150.0 for lv in spec.levels()}, spec.levels(),
                                  np.random.default_rng(0))
        assert 100.0 <= float(hu_from_mu(table["mu"][an.CARTILAGE], energy)) <= 200.0
        assert float(hu_from_mu(table["mu"][an.FLAT_BONE], energy)) > 300.0


def test_bmd_accepts_every_level_the_phantom_has():
    spec = PhantomSpec(fov="chest", rib_pairs=13, bmd_mg_cm3=parse_bmd("C7=120,T4=80,T13=90"), seed=2, **{
        k: v for k, v in CHEST.items() if k != "fov"})
    t = {lv["level"]: lv for lv in simulate_phantom(spec).truth["levels"]}
    assert (t["C7"]["bmd_mg_cm3"], t["T4"]["bmd_mg_cm3"], t["T13"]["bmd_mg_cm3"]) == (120, 80, 90)
    assert PhantomSpec(transition="lumbarised_s1", bmd_mg_cm3={"L6": 70}).levels()[-1] == "L6"
    with pytest.raises(UsageError, match="T4"):
        simulate_phantom(PhantomSpec(bmd_mg_cm3={"T4": 80}))


@pytest.mark.parametrize("kw, message", [
    (dict(fov="lung"), "--fov"),
    (dict(rib_pairs=14), "--rib-pairs"),
    (dict(rib_pairs=13, t12_ribs=False), "contradicts"),
    (dict(transition="sacralised_l5", l6=True), "contradicts"),
    (dict(transition="fused"), "--transition"),
    (dict(fov="chest", transition="lumbarised_s1"), "--fov abdomen"),
    (dict(fov="chest", metal_level="L5"), "--metal-level L5"),
    (dict(metal_level="C7"), "--metal-level C7"),
    (dict(rib_pairs=11, t12_rib_length_mm=20.0), "--t12-rib-length"),
    (dict(t12_rib_length_mm=1.0), "--t12-rib-length"),
    (dict(transition="lumbarised_s1", sacrum="simple"), "--sacrum"),
])
def test_bad_variants_are_usage_errors(kw, message):
    with pytest.raises(UsageError, match=message):
        simulate_phantom(PhantomSpec(**kw))


def test_cli_writes_a_chest_phantom(tmp_path):
    import SimpleITK as sitk

    rc, so, se = run_cli("simulate", "--out", tmp_path / "c", "--fov", "chest", "--rib-pairs", "13", "--pixel", "2",
                         "--slice", "3", "--seed", "1", "--t12-rib-length", "30")
    assert rc == 0, se
    truth = json.loads((tmp_path / "c" / "truth.json").read_text())
    assert truth["variant"]["rib_pairs"] == 13 and truth["variant"]["t12_rib_length_mm"] == 30
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "c" / "labels.nii.gz")))
    assert {6, 7, 8, 19, 28, 20} <= set(np.unique(labels))
    rc, _, se = run_cli("simulate", "--out", tmp_path / "x", "--fov", "chest", "--transition", "sacralised_l5")
    assert rc == 2 and "--fov abdomen" in se and "Traceback" not in se
