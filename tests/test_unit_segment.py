"""Unit tests of the builtin vertebra labeller, the label-map conversion and the orientation check.

Every test builds its input here, as plain data or a small synthetic array, and knows its answer:

* naming (:func:`ctbmd.segment.builtin.naming.name_segments`) takes one
  :class:`~ctbmd.segment.builtin.scoring.Observation` per segment, caudal to cranial; the sizes are those
  the scoring expects (:data:`~ctbmd.segment.builtin.scoring.EXPECTED_SIZE_MM`), so only the anchors under
  test (ribs, lung, sacral alae) decide;
* the disc chain (:mod:`ctbmd.segment.builtin.chain`) takes candidate positions (mm) and values;
* the label maps (:mod:`ctbmd.segment.labelmaps`) take label values;
* the orientation check (:mod:`ctbmd.segment.orientation`) takes a 4 mm synthetic trunk with two lungs.

The project rule under test: never a wrong name; refuse, with the reason, when the evidence conflicts.
"""

from __future__ import annotations

import numpy as np
import pytest

from ctbmd.errors import InvalidInputError, UsageError
from ctbmd.segment.builtin.chain import PITCH_MAX_MM, best_chain, extend_chain, fill_chain, prominent_peaks
from ctbmd.segment.builtin.evidence import sacrum_segment
from ctbmd.segment.builtin.naming import (MIN_MARGIN, SHORT_RIB_MM, find_anchors, name_segments, relative_heights,
                                          unsplit_ends)
from ctbmd.segment.builtin.scoring import EXPECTED_SIZE_MM, Observation, anatomy_sequence, expects_rib
from ctbmd.segment.labelmaps import TOTAL_LEVELS, detect_label_map, to_verse
from ctbmd.types import VERSE_LABELS

REPORTED = ("T11", "T12", "L1", "L2", "L3", "L4", "L5")
RIB, NO_RIB, LUNG = 0.95, 0.02, 0.6
#: An open segment at the foot of the column, with sacral alae: the sacrum.
SACRUM = Observation(0.0, 0.0, 0.0, 0.95, 100.0, 40.0, complete=False, closed_above=True)


def vertebra(name: str, rib: float | None = None, lung: float | None = None, reach: float | None = None,
             sacral: float = 0.0) -> Observation:
    """A whole vertebra of the expected size for ``name``; ribs and lung on thoracic names unless given."""
    thoracic = name.startswith("T")
    rib = (RIB if thoracic else NO_RIB) if rib is None else rib
    lung = (LUNG if thoracic and int(name[1:]) <= 11 else 0.0) if lung is None else lung
    w, h = EXPECTED_SIZE_MM[name]
    return Observation(rib, rib, lung, sacral, w, h, rib_reach_mm=reach)


def column(names: list[str], sacrum: bool = False, **changes: dict) -> tuple[Observation, ...]:
    """Observations of ``names`` (caudal to cranial), the sacrum below when asked; ``changes[name]`` are
    keyword arguments of :func:`vertebra` for that level."""
    obs = tuple(vertebra(n, **changes.get(n, {})) for n in names)
    return ((SACRUM,) if sacrum else ()) + obs


LUMBAR = ["L5", "L4", "L3", "L2", "L1"]
LOWER_THORACIC = ["T12", "T11", "T10"]


# --- naming: anchors -------------------------------------------------------------------------------------


def test_both_anchors_agreeing_name_the_column():
    n = name_segments(column(LUMBAR + LOWER_THORACIC, sacrum=True), REPORTED)
    assert n.named and n.refusal is None
    assert n.names == ("S", *LUMBAR, *LOWER_THORACIC)
    assert sorted((a.kind, a.segment, a.implies, a.agrees) for a in n.anchors) == [
        ("lowest_rib", 6, "T12", True), ("sacrum", 0, "S", True)]
    assert n.best.standard and n.margin >= MIN_MARGIN
    # T1 is out of view: the thoracic names assume 12 rib pairs, the lumbar ones hold (counted from the sacrum)
    assert len(n.warnings) == 1 and "lumbar names, counted from the sacrum, hold" in n.warnings[0]


def test_the_lowest_rib_pair_alone_names_the_column_with_a_warning():
    n = name_segments(column(LUMBAR + LOWER_THORACIC), REPORTED)
    assert n.named, n.refusal
    assert n.names == (*LUMBAR, *LOWER_THORACIC)
    assert [(a.kind, a.segment) for a in n.anchors] == [("lowest_rib", 5)]
    assert any("rest on the lowest rib pair alone" in w for w in n.warnings)


def test_the_sacrum_alone_names_the_lumbar_spine():
    n = name_segments(column(LUMBAR[:4], sacrum=True), REPORTED)
    assert n.named, n.refusal
    assert n.names == ("S", "L5", "L4", "L3", "L2")
    assert [(a.kind, a.agrees) for a in n.anchors] == [("sacrum", True)]
    assert n.warnings == ()  # no thoracic name: nothing rests on the rib count


def test_conflicting_anchors_are_refused_with_both_named():
    # a rib seen on L1 too (a lumbar rib): the lowest rib pair says T12 one level below where the sacrum
    # count puts it. Following either anchor would misname every level, so nothing is named.
    obs = column(LUMBAR + LOWER_THORACIC, sacrum=True, L1={"rib": RIB})
    n = name_segments(obs, REPORTED)
    assert not n.named and n.names == (None,) * len(obs)
    assert n.refusal.startswith("anchors disagree: ")
    assert "the sacrum lies under segment 1" in n.refusal
    assert "the lowest rib pair is on segment 6 from the bottom" in n.refusal
    assert {a.kind: a.agrees for a in n.anchors} == {"sacrum": False, "lowest_rib": True}
    # the record still shows what was weighed: the best labelling and its runner-up
    assert n.best is not None and n.runner_up is not None


def test_eleven_rib_pairs_over_the_sacrum_are_refused_as_transitional():
    # no rib on the vertebra the sacrum count names T12: the evidence fits six lumbar vertebrae
    obs = column(LUMBAR + LOWER_THORACIC, sacrum=True, T12={"rib": NO_RIB})
    n = name_segments(obs, REPORTED)
    assert not n.named and n.names == (None,) * len(obs)
    assert n.refusal.startswith("transitional anatomy suspected")
    assert not n.best.standard and n.best.lumbar == 6


def test_no_anchor_in_view_is_refused():
    n = name_segments(column(["L4", "L3", "L2"]), REPORTED)
    assert not n.named and n.anchors == ()
    assert n.refusal.startswith("no anchor in view")


def test_no_segment_is_refused():
    n = name_segments((), REPORTED)
    assert not n.named and n.names == () and n.refusal == "no vertebra found along the column"


@pytest.mark.parametrize("reach, named", [(SHORT_RIB_MM - 10.0, False), (SHORT_RIB_MM + 20.0, True)])
def test_a_short_lowest_rib_alone_may_be_a_lumbar_rib(reach, named):
    obs = column(LUMBAR + LOWER_THORACIC, T12={"reach": reach})
    n = name_segments(obs, REPORTED)
    assert n.named is named
    if not named:
        assert f"reaches only {reach:.0f} mm" in n.refusal


def test_anchors_are_found_from_the_evidence_not_the_names():
    obs = column(LUMBAR + LOWER_THORACIC, sacrum=True)
    wrong = (None, "S", *LUMBAR, "T12", "T11")  # one level off
    found = {a.kind: (a.segment, a.agrees) for a in find_anchors(obs, wrong)}
    assert found == {"sacrum": (0, False), "lowest_rib": (6, False)}
    # the sacrum is the top of the lowest run of segments with alae, not ala-like bone higher up
    assert sacrum_segment([True, True, False, False]) == 1
    assert sacrum_segment([False, False, True, False]) == 2
    assert sacrum_segment([False, False]) is None


def test_anatomy_sequences_and_rib_priors():
    assert anatomy_sequence(12, 5)[:8] == ("S", "L5", "L4", "L3", "L2", "L1", "T12", "T11")
    assert anatomy_sequence(13, 6)[:9] == ("S", "L6", "L5", "L4", "L3", "L2", "L1", "T13", "T12")
    assert len(anatomy_sequence(12, 5)) == 1 + 5 + 12 + 7
    assert expects_rib("T11", 12) == 0.97 and expects_rib("T12", 12) == 0.85  # the last pair may be missed
    assert expects_rib("T12", 11) == 0.02 and expects_rib("L1", 12) == 0.02


def test_heights_and_unsplit_ends():
    obs = column(LUMBAR + LOWER_THORACIC, sacrum=True)
    names = ("S", *LUMBAR, *LOWER_THORACIC)
    assert relative_heights(obs, names) == pytest.approx({i: 1.0 for i in range(1, 9)})
    assert unsplit_ends(obs) == ()  # the sacrum may be a long open run
    long_open = Observation(0.0, 0.0, 0.0, 0.0, 50.0, 90.0, complete=False)  # 90 mm, no alae
    assert unsplit_ends((long_open,) + obs[1:]) == ("below",)
    assert unsplit_ends(obs[1:] + (long_open,)) == ("above",)


# --- the disc chain --------------------------------------------------------------------------------------


def test_the_chain_skips_decoys_between_discs():
    # discs every 30 mm; decoys at mid-body (45: half a pitch) and 6 mm above a disc (66), the latter
    # stronger than the disc itself
    z = np.array([0.0, 30.0, 45.0, 60.0, 66.0, 90.0, 120.0, 150.0])
    value = np.array([10.0, 10.0, 9.0, 10.0, 12.0, 10.0, 10.0, 10.0])
    assert best_chain(z, value) == [0, 1, 3, 5, 6, 7]


def test_the_chain_follows_a_gradual_change_of_pitch():
    # thoracic to lumbar: the pitch grows by 5-10% per level, 20 to 37 mm
    z = np.cumsum([0.0, 20, 21, 22, 24, 26, 28, 30, 33, 35, 37])
    assert best_chain(z, np.full(len(z), 8.0)) == list(range(len(z)))


def test_the_chain_does_not_bridge_a_missed_disc():
    # lumbar discs every 36 mm, the one at 108 missed (72 mm: no vertebra is that tall), a weak candidate
    # in the gap at 90 (half a pitch from 72): the longer run is kept, and nothing joins the two
    z = np.array([0.0, 36.0, 72.0, 90.0, 144.0, 180.0, 216.0, 252.0])
    value = np.array([10.0, 10.0, 10.0, 4.0, 10.0, 10.0, 10.0, 10.0])
    assert 144.0 - 72.0 > PITCH_MAX_MM
    chain = best_chain(z, value)
    assert chain == [4, 5, 6, 7]
    assert extend_chain(z, value, chain) == chain  # the gap candidate is below the chain's lower quartile
    # asked to fill below (module step 5: the run below the chain is too long), the strongest candidate
    # 13-60 mm beyond the end is added however weak; the naming's height check then judges it
    assert fill_chain(z, value, chain, None, ends={"below": 1}) == [3, 4, 5, 6, 7]


def test_a_pair_without_a_pedicle_between_cannot_be_consecutive():
    z = np.array([0.0, 30.0, 60.0, 90.0])
    value = np.full(4, 10.0)
    assert best_chain(z, value) == [0, 1, 2, 3]
    pedicle = np.ones((4, 4), bool)
    pedicle[1, 2] = False
    assert best_chain(z, value, pedicle) == [0, 1]  # two equal halves: the first one
    # an end disc at a plausible pitch is added only with a pedicle run in between
    assert extend_chain(z, value, [1, 2, 3]) == [0, 1, 2, 3]
    pedicle = np.ones((4, 4), bool)
    pedicle[0, 1] = False
    assert extend_chain(z, value, [1, 2, 3], pedicle) == [1, 2, 3]


def test_prominent_peaks_known_answers():
    x = np.array([0.0, 1.0, 0.0, 2.0, 2.0, 0.0, 0.5, 0.4, 3.0, 0.0])
    peaks, prom = prominent_peaks(x, 0.3)
    assert peaks.tolist() == [1, 3, 8]  # the flat top 3-4 gives its left middle; 6 rises only 0.1
    assert prom.tolist() == [1.0, 2.0, 3.0]
    assert prominent_peaks(x, 1.5)[0].tolist() == [3, 8]


# --- label maps ------------------------------------------------------------------------------------------


def test_detect_label_map_total_verse_and_ambiguous():
    total = [5, 20, 21, 25, 26, 27, 28, 29, 30, 31, 32]  # organs, sacrum, S1, L5-L1, T12
    assert detect_label_map(np.array(total)) == "total"
    assert detect_label_map(np.array([0, 18, 19, 20, 21, 22, 23, 24])) == "verse"  # T11-L5
    assert detect_label_map(np.array([20, 24, 25])) == "verse"  # L6 is a VerSe number too
    for values in ([], [0]):  # nothing, background only
        with pytest.raises(UsageError, match="label_map") as info:
            detect_label_map(np.array(values, int))
        assert "--label-map" in info.value.one_line("cli") and "--" not in str(info.value)


def test_detect_label_map_refuses_values_the_two_maps_read_differently():
    # 26-28 are VerSe's sacrum, coccyx and T13 but total's S1, L5 and L4: without a value above 28 (which
    # only total uses) a map holding them could be either, and the wrong reading misnames vertebrae
    for values in ([20, 24, 25, 28], [19, 28, 20, 21, 22, 23, 24, 26], [25, 26, 27, 28], [5, 21, 22, 27]):
        with pytest.raises(UsageError, match="VerSe's sacrum"):
            detect_label_map(np.array(values))
    # with a value only total uses, 26-28 are total's S1, L5 and L4
    assert detect_label_map(np.array([25, 26, 27, 28, 77, 78])) == "total"  # a pelvis: hips 77, 78
    for values in ([200], [20, 21, 22, 200]):  # above total's 118 labels: neither map
        with pytest.raises(UsageError, match="fit neither"):
            detect_label_map(np.array(values))


def test_to_verse_maps_total_to_verse_numbers_and_drops_organs():
    labels = np.array([[0, 5, 31], [27, 32, 43]])  # background, liver, L1 / L5, T12, T1
    out = to_verse(labels, "total")
    assert out.dtype == np.uint8
    assert out.tolist() == [[0, 0, VERSE_LABELS["L1"]], [VERSE_LABELS["L5"], VERSE_LABELS["T12"], VERSE_LABELS["T1"]]]
    assert to_verse(labels, "auto").tolist() == out.tolist()
    assert TOTAL_LEVELS[31] == "L1" and TOTAL_LEVELS[50] == "C1" and 25 not in TOTAL_LEVELS
    verse = np.array([0, 8, 19, 20, 24, 25, 28])
    assert to_verse(verse, "verse").tolist() == verse.tolist()
    with pytest.raises(UsageError, match="unknown label map"):
        to_verse(verse, "vertebrae")


def test_phantom_truth_with_the_sacrum_as_26_needs_the_map_named():
    """``ctbmd simulate`` writes VerSe numbers with 26 = sacrum (VerSe's own number for it). 26 is S1 in a
    TotalSegmentator ``total`` map, so ``auto`` refuses to guess; named, the map reads as VerSe. (Before issue
    18 it was read as ``total``, no vertebra survived, and the run failed later with a misleading reason.)"""
    phantom = np.array([0, 17, 18, 19, 20, 21, 22, 23, 24, 26])  # T10-L5 and the sacrum
    with pytest.raises(UsageError, match="give label_map verse or total"):
        to_verse(phantom, "auto")
    assert to_verse(phantom, "verse").tolist() == [0, 17, 18, 19, 20, 21, 22, 23, 24, 0]  # the sacrum dropped


def test_a_verse_map_with_t13_and_the_sacrum_is_never_read_as_total():
    verse = np.array([0, 19, 28, 20, 21, 22, 23, 24, 26])  # T12, T13, L1-L5, the sacrum
    # read as total, T13 (28) would come out named L4: a wrong name. The ambiguous values are refused.
    with pytest.raises(UsageError):
        detect_label_map(verse)


# --- orientation -----------------------------------------------------------------------------------------


def trunk(lungs_at: str = "bottom", airway_above: bool = False):
    """A 320 x 240 x 150 mm trunk (4 x 4 x 5 mm voxels, L, P, S axes) with two lungs in 10 slices.

    The body is a soft-tissue ellipse (40 HU, semi-axes 140 and 100 mm) in air (-1000 HU); each lung
    a -850 HU disc of radius 30 mm, 60 mm left and right of the midline and 30 mm behind the centre
    (posterior), in the lowest or highest 50 mm. ``airway_above`` puts a midline trachea (-1000 HU,
    radius 8 mm) in every slice above the lungs.
    """
    from ctbmd.types import CTVolume, Grid, ScanInfo

    nx, ny, nz, sp = 80, 60, 30, (4.0, 4.0, 5.0)
    x = (np.arange(nx) - nx / 2 + 0.5)[:, None] * sp[0]
    y = (np.arange(ny) - ny / 2 + 0.5)[None, :] * sp[1]
    plane = np.where((x / 140.0) ** 2 + (y / 100.0) ** 2 <= 1.0, 40.0, -1000.0)
    lung = ((np.abs(x) - 60.0) ** 2 + (y - 30.0) ** 2) <= 30.0 ** 2
    hu = np.repeat(plane[:, :, None], nz, axis=2).astype(np.float32)
    rows = slice(0, 10) if lungs_at == "bottom" else slice(nz - 10, nz)
    hu[:, :, rows][lung] = -850.0
    if airway_above:
        hu[:, :, 10:][x ** 2 + y ** 2 <= 8.0 ** 2] = -1000.0
    grid = Grid((nx, ny, nz), sp, (0.0, 0.0, 0.0), (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    return CTVolume(hu, grid, ScanInfo("synthetic.nii.gz", "nifti", grid))


def test_lung_mask_finds_both_lungs_and_not_gas():
    from ctbmd.segment.orientation import lung_mask

    ct = trunk()
    lungs, outline = lung_mask(ct.hu, ct.spacing_mm)
    assert np.array_equal(lungs, ct.hu == -850.0)
    assert outline[:, :, 0].sum() == (ct.hu[:, :, 15] > -400).sum()  # the lungs lie inside the outline
    gas = ct.hu.copy()
    gas[gas == -850.0] = -1000.0  # bowel gas is darker than aerated lung
    assert not lung_mask(gas, ct.spacing_mm)[0].any()


def test_lungs_at_the_inferior_edge_under_an_abdomen_are_a_flipped_header():
    from ctbmd.segment.orientation import check_superior_inferior

    with pytest.raises(InvalidInputError, match="superior/inferior axis looks flipped"):
        check_superior_inferior(trunk("bottom"))
    assert check_superior_inferior(trunk("top")) is None  # upright: the lung bases above the abdomen


def test_lungs_at_the_inferior_edge_under_a_neck_are_no_verdict():
    from ctbmd.segment.orientation import airway_share, check_superior_inferior, lung_mask

    ct = trunk("bottom", airway_above=True)
    assert check_superior_inferior(ct) is None  # the trachea says neck, however wide the shoulders
    _, outline = lung_mask(ct.hu, ct.spacing_mm)
    assert airway_share(ct.hu, outline, ct.spacing_mm, range(10, 30)) == 1.0
    assert airway_share(ct.hu, outline, ct.spacing_mm, range(0, 10)) == 0.0  # the lungs are lateral
    assert airway_share(ct.hu, ct.hu > -400, ct.spacing_mm, range(10, 30)) == 0.0  # the outline holds it
    assert airway_share(ct.hu, outline, ct.spacing_mm, []) == 0.0
