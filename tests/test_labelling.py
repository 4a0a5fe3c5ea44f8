"""The builtin labeller's naming rules on plain data, and its steps on synthetic arrays.

Columns are written caudal to cranial, as :func:`ctbmd.segment.builtin.naming.name_segments`
takes them. Sizes follow the module's expected sizes so only the evidence under test decides.
"""

import numpy as np
import pytest

from ctbmd.segment.builtin.discs import best_chain, extend_chain
from ctbmd.segment.builtin.evidence import Rib, assign_ribs
from ctbmd.segment.builtin.naming import EXPECTED_SIZE_MM, Observation, name_segments
from ctbmd.segment.builtin.segments import Segment

REPORTED = ("T11", "T12", "L1", "L2", "L3", "L4", "L5")


def vertebra(name, rib=0.0, lung=0.0, sacral=0.0, complete=True, height_scale=1.0):
    w, h = EXPECTED_SIZE_MM.get(name, (55.0, 40.0))
    return Observation(rib_left=rib, rib_right=rib, lung=lung, sacral=sacral, width_mm=w,
                       height_mm=h * height_scale, complete=complete, closed_above=True)


def abdomen(ribs_on=("T10", "T11", "T12"), sacrum=True, lung_on=("T10", "T11")):
    """T10-L5 (and the sacrum), caudal to cranial."""
    names = ["L5", "L4", "L3", "L2", "L1", "T12", "T11", "T10"]
    obs = [vertebra(n, rib=0.95 if n in ribs_on else 0.02, lung=0.6 if n in lung_on else 0.0) for n in names]
    if sacrum:
        obs.insert(0, Observation(0.0, 0.0, 0.0, 0.95, 100.0, 40.0, complete=False, closed_above=True))
    return tuple(obs), (["S"] if sacrum else []) + names


def test_standard_abdomen_is_named_from_both_anchors():
    obs, truth = abdomen()
    n = name_segments(obs, REPORTED)
    assert n.named, n.refusal
    assert list(n.names) == truth
    assert {a.kind for a in n.anchors} == {"sacrum", "lowest_rib"} and all(a.agrees for a in n.anchors)
    assert n.margin >= np.log(10)


def test_sacrum_and_lowest_rib_disagree_is_refused_with_both_named():
    # 11 rib pairs seen: T12 carries no rib, so the lowest rib counts as "T12" one level above
    # where the sacrum count puts T12. Following either anchor would misname every level.
    obs, _ = abdomen(ribs_on=("T10", "T11"))
    n = name_segments(obs, REPORTED)
    assert not n.named and all(x is None for x in n.names)
    assert "transitional anatomy" in n.refusal or "anchors disagree" in n.refusal
    assert "sacrum" in n.refusal and "lowest rib pair" in n.refusal


def test_six_rib_free_vertebrae_above_the_sacrum_is_refused():
    # a lumbarised S1: six rib-free vertebrae between the lowest rib and the sacrum
    obs, _ = abdomen()
    extra = vertebra("L5")
    obs = (obs[0], extra) + obs[1:]
    n = name_segments(obs, REPORTED)
    assert not n.named
    assert "6 lumbar" in n.refusal or "anchors disagree" in n.refusal


def test_no_anchor_in_view_is_refused():
    obs = tuple(vertebra(n) for n in ("L4", "L3", "L2"))
    n = name_segments(obs, REPORTED)
    assert not n.named and "no anchor" in n.refusal


def test_lowest_rib_alone_names_a_chest_column():
    # a chest CT from T3 to L2 (cut): no sacrum, no first rib pair in view
    names = ["L2", "L1"] + [f"T{i}" for i in range(12, 2, -1)]
    obs = [vertebra(n, rib=0.95 if n.startswith("T") else 0.02, lung=0.6 if n.startswith("T") else 0.0)
           for n in names]
    obs[0] = Observation(0.02, 0.02, 0.0, 0.0, 44.0, 20.0, complete=False, closed_above=True)
    n = name_segments(tuple(obs), REPORTED)
    assert n.named, n.refusal
    assert list(n.names) == names
    assert [a.kind for a in n.anchors] == ["lowest_rib"]


def test_first_rib_needs_a_whole_rib_free_vertebra_above():
    names = ["L1"] + [f"T{i}" for i in range(12, 0, -1)] + ["C7", "C6"]
    obs = [vertebra(n, rib=0.95 if n.startswith("T") else 0.02, lung=0.6 if n.startswith("T") else 0.0)
           for n in names]
    n = name_segments(tuple(obs), REPORTED)
    assert n.named and list(n.names) == names
    assert {a.kind for a in n.anchors} == {"lowest_rib", "first_rib"}
    # the same column cut just above T1: no first-rib anchor can be claimed
    cut = obs[:-2] + [Observation(0.02, 0.02, 0.3, 0.0, 22.0, 10.0, complete=False, closed_above=False)]
    n_cut = name_segments(tuple(cut), REPORTED)
    assert {a.kind for a in n_cut.anchors} == {"lowest_rib"}
    # ... and since the column reaches T1, where the rib count could be checked, it is refused
    assert not n_cut.named and "first rib pair is not found" in n_cut.refusal


def test_names_without_the_first_rib_warn_that_they_assume_12_rib_pairs():
    obs, _ = abdomen()
    n = name_segments(obs, REPORTED)
    assert n.named and any("assume 12 rib pairs" in w and "lumbar names" in w for w in n.warnings)
    names = ["L1"] + [f"T{i}" for i in range(12, 0, -1)] + ["C7", "C6"]
    chest = [vertebra(x, rib=0.95 if x.startswith("T") else 0.02, lung=0.6 if x.startswith("T") else 0.0)
             for x in names]
    assert not any("assume 12 rib pairs" in w for w in name_segments(tuple(chest), REPORTED).warnings)


def test_a_rib_on_a_lumbar_name_or_a_merged_segment_is_refused():
    obs, _ = abdomen()
    with_lumbar_rib = list(obs)
    with_lumbar_rib[3] = vertebra("L3", rib=0.95)  # a rib seen on L3
    assert not name_segments(tuple(with_lumbar_rib), REPORTED).named
    merged = list(obs)
    merged[2] = vertebra("L4", height_scale=2.2)  # one segment holding two vertebrae
    n = name_segments(tuple(merged), REPORTED)
    assert not n.named


def test_extend_chain_adds_a_strong_end_disc_at_a_short_pitch_only():
    # chain 100-140-180-220; below it a strong disc at 74 (pitch 26 = 0.65 of 40, the L5-S1 bend),
    # a weak one at 50, and nothing above but a mid-body candidate at 240 (half a pitch)
    z = np.array([50.0, 74.0, 100.0, 140.0, 180.0, 220.0, 240.0])
    value = np.array([5.0, 30.0, 30.0, 35.0, 35.0, 30.0, 40.0])
    assert extend_chain(z, value, [2, 3, 4, 5]) == [1, 2, 3, 4, 5]
    weak = value.copy()
    weak[1] = 10.0  # below the chain's lower quartile
    assert extend_chain(z, weak, [2, 3, 4, 5]) == [2, 3, 4, 5]
    no_pedicle = np.ones((7, 7), bool)
    no_pedicle[1, 2] = False  # no pedicle run between 74 and 100: half a vertebra
    assert extend_chain(z, value, [2, 3, 4, 5], no_pedicle) == [2, 3, 4, 5]


def test_best_chain_skips_a_mid_body_candidate():
    # discs every 36 mm with a strong mid-body candidate at 54: taking it would halve two pitches
    z = np.array([0.0, 36.0, 54.0, 72.0, 108.0])
    assert best_chain(z, np.array([10.0, 10.0, 9.0, 10.0, 10.0])) == [0, 1, 3, 4]
    # a pitch outside 13-60 mm cannot join a chain
    assert best_chain(np.array([0.0, 70.0]), np.array([5.0, 6.0])) == [1]


def segments(bounds):
    return tuple(Segment(i, lo, hi, True, True, 40.0, 30.0, np.zeros(3)) for i, (lo, hi) in enumerate(bounds))


def test_ribs_are_matched_in_order_with_the_floating_ribs_lower():
    # vertebrae 30 mm tall; ribs of T10-T12 near the top of their vertebra, the lowest (12th)
    # rib only 0.2 of the way up its own vertebra - nearer the disc below than its own top
    segs = segments([(0, 30), (30, 60), (60, 90), (90, 120)])  # L1, T12, T11, T10
    ribs = tuple(Rib("left", s, 20.0, 100.0, 1.0) for s in (36.0, 76.0, 117.0))
    matched = assign_ribs(ribs, segs)
    assert {k[0]: v.s_mm for k, v in matched.items()} == {1: 36.0, 2: 76.0, 3: 117.0}
    # a rib far above a cut column is not forced onto the vertebra below it
    far = assign_ribs((Rib("right", 80.0, 20.0, 100.0, 1.0),), segments([(0, 30), (30, 60)]))
    assert far == {}


@pytest.mark.parametrize("bad", ["T0", "L6-L1", "S1", "L5-T12"])
def test_levels_option_rejects_bad_items(bad):
    from ctbmd.errors import UsageError
    from ctbmd.segment import parse_levels

    with pytest.raises(UsageError, match="levels") as info:
        parse_levels(bad)
    # the library names the parameter; the CLI writes it as the flag
    assert "--levels" not in str(info.value) and "--levels" in info.value.one_line("cli")


def test_levels_option_parses_ranges_and_lists():
    from ctbmd.segment import parse_levels

    assert parse_levels("T11-L5") == REPORTED
    assert parse_levels("l2, L1,T4-T6") == ("T4", "T5", "T6", "L1", "L2")


def test_fill_chain_adds_the_strongest_disc_at_an_end_and_inside_a_double_segment():
    from ctbmd.segment.builtin.discs import fill_chain

    # chain 100-140-180-260; below it a weak disc at 72 (pitch 28), a stronger one at 90 (10 mm: too
    # close) and one at 30 (70 mm: too far); inside the 80 mm segment 180-260 candidates at 188
    # (8 mm from its end) and 222
    z = np.array([30.0, 72.0, 90.0, 100.0, 140.0, 180.0, 188.0, 222.0, 260.0])
    value = np.array([40.0, 6.0, 30.0, 30.0, 35.0, 35.0, 50.0, 8.0, 30.0])
    chain = [3, 4, 5, 8]
    assert fill_chain(z, value, chain, None, ends={"below": 1}) == [1, 3, 4, 5, 8]
    assert fill_chain(z, value, chain, None, splits=((180.0, 260.0),)) == [3, 4, 5, 7, 8]
    # without a pedicle run between 72 and 100 (half a vertebra) nothing is added below
    no_pedicle = np.ones((9, 9), bool)
    no_pedicle[1, 3] = False
    assert fill_chain(z, value, chain, no_pedicle, ends={"below": 1}) == chain


def test_an_open_end_longer_than_a_vertebra_is_unsplit_unless_it_is_the_sacrum():
    from ctbmd.segment.builtin.naming import unsplit_ends

    obs, _ = abdomen()
    assert unsplit_ends(obs) == ()
    long_open = Observation(0.0, 0.0, 0.0, 0.0, 50.0, 90.0, complete=False, closed_above=True)
    assert unsplit_ends((long_open,) + obs[1:]) == ("below",)
    assert not name_segments((long_open,) + obs[1:], REPORTED).named


def test_ala_like_bone_above_rib_free_vertebrae_is_not_the_sacrum():
    # transverse processes read as alae on L3, with L4 and L5 free of them below: the sacrum is the
    # foot of the column, so the anchor stays on the real first sacral segment
    obs, truth = abdomen()
    fooled = list(obs)
    fooled[3] = vertebra("L3", sacral=0.95)
    n = name_segments(tuple(fooled), REPORTED)
    sacrum = next(a for a in n.anchors if a.kind == "sacrum")
    assert sacrum.segment == 0 and sacrum.agrees
    assert n.named and list(n.names) == truth


def test_a_cut_cervical_segment_above_the_first_rib_does_not_block_the_names():
    # a chest CT whose top edge leaves half of C6 between a disc and the edge
    names = ["L1"] + [f"T{i}" for i in range(12, 0, -1)] + ["C7", "C6"]
    obs = [vertebra(n, rib=0.95 if n.startswith("T") else 0.02, lung=0.6 if n.startswith("T") else 0.0)
           for n in names]
    obs[-1] = vertebra("C6", height_scale=0.45)
    n = name_segments(tuple(obs), REPORTED)
    assert n.named and list(n.names) == names
