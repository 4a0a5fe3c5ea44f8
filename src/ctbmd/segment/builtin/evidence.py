"""Anatomical evidence of each vertebra's level: ribs, lung, sacral alae and size.

Radiologists name vertebrae by counting ribs from T1 down or vertebrae up from
the sacrum, and check that the counts agree (Carrino et al., Radiology 2011,
doi 10.1148/radiol.10090897). The evidence below is what those counts rest on;
:mod:`.naming` weighs it.

* **Ribs** (:func:`find_ribs`). In the straightened column widened to +-110 mm
  (2 mm steps), bone (> 180 HU) at least 20 mm from the mid-line and from 15 mm
  in front of the canal to 60 mm behind it is split into 3-D connected pieces.
  Every crossing of a piece through the ring 36-46 mm from the mid-line (just
  beyond the transverse-process tips, in front of the scapula) that has an end
  within 32 mm of the canal line (the costovertebral and costotransverse joints)
  is one rib or transverse process (:func:`_rib_ends`). It is a rib when it runs
  on laterally - confidence 0 at a reach of 45 mm to 1 at 65 mm - as a bar, not
  a plate (cross-section under 250 mm^2 34-50 mm out), and never beside the sacrum
  or the vertebra on it, where the iliac crest lies (:data:`PELVIS_SEGMENTS`). Lumbar transverse processes
  reach 35-50 mm and C7's about 37 mm (Panjabi 1991/1992); the first rib reaches
  60-75 mm before it turns forward, lower ribs 90 mm or more; the ilium is a
  plate; scapulae, clavicles and humeri never come near the canal line.
* **Ribs to vertebrae** (:func:`assign_ribs`). Each rib pair belongs to one
  thoracic vertebra, in order. The medial ends of ribs 1-10 lie at the upper
  end of their own vertebra (rib heads at the disc above for ribs 2-9, the
  tubercles on its transverse process), those of ribs 11-12 at its middle
  (Gray's Anatomy). Per side, ribs and vertebrae are matched one to one, in
  order, maximising the summed closeness of each rib to 0.85 of its vertebra's
  height (0.4 and 0.55 for the lowest two ribs of the side) by dynamic
  programming, so the count, not a single position, decides;
  a rib is never matched to a vertebra it lies outside of by more than 0.2 of
  its height below or 0.3 above.
* **Lung** (:func:`lung_fraction`): the fraction of aerated lung (< -500 HU)
  beside the body at mid-height, 2-22 mm lateral of its edge, from its anterior
  edge to 10 mm behind the canal; the larger side counts. Lung lies beside every
  thoracic vertebra and, in inspiration, reaches about T12; never beside L2-L5.
* **Sacral alae** (:func:`sacral_evidence`): in planes 8-20 mm below the
  segment's upper disc, bone at the bodies' depth (11-35 mm in front of the
  canal) and connected to the body there reaches beyond 33 mm on both sides
  only where alae leave the first sacral body (sacrum 100-120 mm wide, lumbar
  bodies 40-55 mm); L5's transverse processes lie behind, at the canal's depth,
  and cannot connect. The score rises from 0 at 33 mm to 1 at 45 mm (the
  shorter side, the best plane).
* **Size**: body width and disc-to-disc height grow from T1 to L5 (Panjabi et
  al., Spine 1991;16:888 and 1992;17:299); see :mod:`.naming`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

import cc3d
import numpy as np
from scipy import ndimage as ndi

from ctbmd.segment.builtin.column import Column, straighten
from ctbmd.segment.builtin.grid import WorkGrid
from ctbmd.segment.builtin.segments import Segment

#: Rib detection (see the module docstring): bone threshold (HU), the field (mm), the core cut
#: (mm from the mid-line), the largest medial-end distance (mm) and the reach ramp (mm).
RIB_HU = 180.0
RIB_FIELD_U_MM = 110.0
RIB_FIELD_V_MM = (-15.0, 60.0)
RIB_CORE_MM = 20.0
RIB_MEDIAL_MAX_MM = 32.0
RIB_REACH_MM = (45.0, 65.0)
RIB_GRID_MM = 2.0
#: Ring (mm from the mid-line) where each rib is counted as it crosses: just beyond the tips of the
#: thoracic transverse processes (25-40 mm, Panjabi 1991), within the scapula's medial border.
RIB_RING_MM = (36.0, 46.0)
RIB_RING_MAX_V_MM = 30.0
#: A run of ring crossings longer than this (mm along the column) holds several ribs that touch there
#: (one rib's crossing spans up to ~28 mm where it descends steeply through the ring).
RIB_CROSSING_MAX_MM = 32.0
#: Ring crossings further apart than this along the column (mm; two empty 2 mm planes) are different ribs.
RIB_CROSSING_GAP_MM = 4.0
#: Steepest descent of a rib as it runs out from the canal (mm of arc length per mm of left-right
#: distance): the 11th and 12th ribs fall at up to about 50 degrees.
RIB_MAX_SLOPE = 1.2
#: A rib is a bar, not a plate: its mean cross-section (mm^2) 34-50 mm from the mid-line, between
#: the transverse-process tips and the scapula's medial border, stays below this. A rib is about
#: 10 x 15 mm; the ilium, met at the same distance beside L5 and S1, is a plate many times larger.
RIB_NECK_MM = (34.0, 50.0)
RIB_SECTION_MAX_MM2 = 250.0
#: Where a rib's medial end lies along its own vertebra (fraction of the height above its lower
#: disc), and the tolerance of the match (fraction of the height): near the upper disc for ribs
#: 1-10, lower for the two floating ribs, which articulate with the middle of their body and run
#: steeply down (the lowest and second-lowest rib of each side; Gray's Anatomy).
RIB_POSITION, RIB_TOLERANCE = 0.85, 0.6
RIB_POSITION_LOW = (0.4, 0.55)
#: A rib is never matched to a vertebra it lies outside of by more than these fractions of its
#: height: below it (ribs 11-12 descend steeply) or above it (heads of ribs 2-9 at the disc above).
RIB_REL_RANGE = (-0.2, 1.3)
#: No rib articulates with the sacrum or the vertebra above it: bone met beside them is the iliac
#: crest, which lies level with L4-L5 (the intercristal line), and is not taken for a rib. The
#: sacrum's run of segments with alae (:func:`sacrum_segment`) must start among this many segments
#: at the foot of the column.
PELVIS_SEGMENTS = 2
#: Lung: HU threshold and the zone beside the body (mm beyond its edge).
LUNG_HU = -500.0
LUNG_ZONE_MM = (2.0, 22.0)
#: Sacral alae: bone threshold, planes below the upper disc (mm), depth band (mm) and the ramp (mm).
ALA_HU = 150.0
ALA_PLANES_MM = (8.0, 14.0, 20.0)
ALA_BAND_MM = (-35.0, -11.0)
ALA_REACH_MM = (33.0, 45.0)


@dataclass(frozen=True)
class Rib:
    """A rib found beside the column.

    Attributes
    ----------
    side : {"left", "right"}
        Patient side.
    s_mm : float
        Arc length (mm) of its medial end along the canal line.
    medial_mm : float
        Closest approach to the canal line (mm, left-right).
    reach_mm : float
        Farthest lateral extent (mm), at most :data:`RIB_FIELD_U_MM`.
    confidence : float
        0-1, from the reach (:data:`RIB_REACH_MM`).
    """

    side: Literal["left", "right"]
    s_mm: float
    medial_mm: float
    reach_mm: float
    confidence: float


@dataclass(frozen=True)
class VertebraEvidence:
    """What one segment shows about its level.

    Attributes
    ----------
    segment : Segment
        The segment measured.
    rib_left, rib_right : float
        Confidence (0-1) that a rib articulates with it on that side.
    rib_reach_left_mm, rib_reach_right_mm : float or None
        Lateral reach of the matched rib (mm), None when no rib was matched.
    lung : float
        Fraction (0-1) of the paravertebral zone that is aerated lung.
    sacral : float
        0-1 sacral-ala score of its upper part (0 when its upper disc is not in view).
    ala_mm : float or None
        The shorter lateral reach (mm) of body-level bone below its upper disc.
    """

    segment: Segment
    rib_left: float
    rib_right: float
    rib_reach_left_mm: float | None
    rib_reach_right_mm: float | None
    lung: float
    sacral: float
    ala_mm: float | None

    @property
    def rib(self) -> float:
        """The stronger side's rib confidence."""
        return max(self.rib_left, self.rib_right)


@dataclass(frozen=True)
class ColumnEvidence:
    """Evidence for a whole column.

    Attributes
    ----------
    vertebrae : tuple of VertebraEvidence
        One per segment, caudal to cranial.
    ribs : tuple of Rib
        Every rib found.
    overview : numpy.ndarray
        float32 ``(nu, ns)``: maximum HU over ``v`` -15..60 mm of the widened
        straightened column (ribs, arches, sacrum), u -110..110 mm, 2 mm steps.
    overview_s_mm : numpy.ndarray
        Arc length (mm) of each ``overview`` column.
    """

    vertebrae: tuple[VertebraEvidence, ...]
    ribs: tuple[Rib, ...]
    overview: np.ndarray
    overview_s_mm: np.ndarray


class RibScan(NamedTuple):
    """The ribs beside a column and the overview they were found in (:func:`find_ribs`).

    Attributes
    ----------
    ribs : tuple of Rib
        Per side, caudal to cranial.
    overview, overview_s_mm : numpy.ndarray
        See :class:`ColumnEvidence`.
    """

    ribs: tuple[Rib, ...]
    overview: np.ndarray
    overview_s_mm: np.ndarray


def find_ribs(work: WorkGrid, col: Column) -> RibScan:
    """Find the ribs beside the column (see the module docstring).

    Returns
    -------
    RibScan
        ``(ribs, overview, overview_s_mm)``.
    """
    sp = col.spacing_mm
    step = max(1, int(round(RIB_GRID_MM / (col.s_mm[1] - col.s_mm[0])))) if len(col.s_mm) > 1 else 1
    u = np.arange(-RIB_FIELD_U_MM, RIB_FIELD_U_MM + RIB_GRID_MM / 2, RIB_GRID_MM)
    v = np.arange(RIB_FIELD_V_MM[0], RIB_FIELD_V_MM[1] + RIB_GRID_MM / 2, RIB_GRID_MM)
    s = col.s_mm[::step]
    wide = straighten(work.hu, col.centre_ijk[::step], col.frames[::step], sp, u, v)
    bone = wide > RIB_HU
    bone[np.abs(u) < RIB_CORE_MM] = False
    labels = cc3d.connected_components(bone, connectivity=26)
    ribs = []
    for box, comp in zip(ndi.find_objects(labels), range(1, int(labels.max()) + 1)):
        if box is None:
            continue
        iu, jv, ks = np.nonzero(labels[box] == comp)
        if len(iu) < 8:
            continue
        uu = u[iu + box[0].start]
        ss = s[ks + box[2].start]
        side = "left" if np.median(uu) > 0 else "right"
        for s_end, medial, reach, section in _rib_ends(np.abs(uu), ss, v[jv + box[1].start]):
            conf = float(np.clip((reach - RIB_REACH_MM[0]) / (RIB_REACH_MM[1] - RIB_REACH_MM[0]), 0.0, 1.0))
            if conf > 0.0 and section <= RIB_SECTION_MAX_MM2:
                ribs.append(Rib(side=side, s_mm=s_end, medial_mm=medial, reach_mm=reach, confidence=conf))
    return RibScan(tuple(sorted(ribs, key=lambda r: (r.side, r.s_mm))), wide.max(axis=1), s)


def _rib_ends(au: np.ndarray, ss: np.ndarray, vv: np.ndarray):
    """Split one bone piece into the ribs (or transverse processes) that start near the canal.

    Pieces can hold several ribs that touch laterally, or ribs joined through the
    transverse processes near the spine. Each rib crosses the ring
    :data:`RIB_RING_MM` from the mid-line once, as a bar, less than
    :data:`RIB_RING_MAX_V_MM` behind the canal (the scapula lies further back): the
    piece's voxels there, grouped along the column (split at two empty planes), give one
    crossing per rib.
    Each crossing's medial end is the part of the piece within
    :data:`RIB_MEDIAL_MAX_MM` of the canal line from 4 mm below the crossing to
    20 mm above it (a rib rises as it runs in); of several stretches there, the
    one nearest the crossing. What belongs to that end is the
    part of the piece inside a cone that descends laterally (ribs run down as they
    run out, the floating ribs up to about 50 degrees, :data:`RIB_MAX_SLOPE`; a rib
    never climbs above its head by more than 6 mm): from it comes the end's lateral
    reach; its mean cross-section 34-50 mm from the mid-line is read in a cone half
    as steep. Where the crossings of several ribs run together (ribs crowded in the
    upper thorax, :data:`RIB_CROSSING_MAX_MM`), every stretch near the canal beside
    them is a candidate end. Two ends whose half-steep cones reach the same highest
    bone 55-80 mm out run into one rib (a transverse process of the vertebra above
    touching it, as C7's touches the first rib; a rib's head and its tubercle):
    only the lower is kept.

    Parameters
    ----------
    au, ss, vv : numpy.ndarray
        ``|u|``, ``s`` and ``v`` (mm) of the piece's voxels on the 2 mm rib grid.

    Yields
    ------
    tuple
        ``(s_end, medial_mm, reach_mm, section_mm2)`` per medial end.
    """
    near = au <= RIB_MEDIAL_MAX_MM
    ring = (au >= RIB_RING_MM[0]) & (au <= RIB_RING_MM[1]) & (vv <= RIB_RING_MAX_V_MM)
    if not near.any() or not ring.any():
        return
    s_ring = np.sort(ss[ring])
    ends = []
    candidates = []
    for group in np.split(s_ring, np.nonzero(np.diff(s_ring) > RIB_CROSSING_GAP_MM)[0] + 1):
        s_cross = float(np.median(group))
        window = near & (ss >= group[0] - 4.0) & (ss <= group[-1] + 20.0)
        if not window.any():
            continue
        s_in = np.sort(ss[window])
        runs = np.split(s_in, np.nonzero(np.diff(s_in) > 4.0)[0] + 1)
        if group[-1] - group[0] <= RIB_CROSSING_MAX_MM:
            # one rib: of several stretches near the canal (its own head, a transverse process of
            # the vertebra above), the one nearest the crossing
            candidates.append(min(runs, key=lambda r: abs(float(np.median(r)) - s_cross)))
        else:
            # ribs crowded against one another where they cross the ring (upper thorax): each
            # stretch near the canal alongside the crossing is a rib's head or a transverse process
            candidates.extend(runs)
    for run in candidates:
        in_end = near & (ss >= run[0]) & (ss <= run[-1])
        medial = float(au[in_end].min())
        s_end = float(np.median(ss[in_end & (au <= medial + 4.0)]))
        out = np.maximum(au - RIB_CORE_MM, 0.0)
        cone = (ss <= s_end + 6.0) & (ss >= s_end - 6.0 - RIB_MAX_SLOPE * out)
        narrow = (ss <= s_end + 6.0) & (ss >= s_end - 6.0 - 0.5 * RIB_MAX_SLOPE * out)
        band = narrow & (au >= RIB_NECK_MM[0]) & (au <= RIB_NECK_MM[1])
        n_cols = len(np.unique(au[band]))
        section = float(band.sum()) * RIB_GRID_MM ** 2 / max(n_cols, 1)
        # the highest stretch of bone 55-80 mm out in its cone: its own rib, or the rib it touches
        far = narrow & (au >= 55.0) & (au <= 80.0)
        if far.any():
            far &= ss >= ss[far].max() - 8.0
        lateral = set(np.nonzero(far)[0].tolist())
        ends.append((s_end, medial, float(au[cone].max()), section, lateral))
    # Two crossings that run into the same rib further out are one rib (with the transverse process
    # of the vertebra above touching it, as C7's touches the first rib): the lower one is the rib.
    ends.sort(key=lambda e: e[0])
    kept: list[tuple] = []
    for e in ends:
        if any(k[0] == e[0] for k in kept):
            continue
        same = [k for k in kept if k[4] and e[4] and len(k[4] & e[4]) > 0.5 * min(len(k[4]), len(e[4]))]
        if same:
            continue
        kept.append(e)
    for s_end, medial, reach, section, _ in kept:
        yield s_end, medial, reach, section


def assign_ribs(ribs: tuple[Rib, ...], segments: tuple[Segment, ...]) -> dict[tuple[int, str], Rib]:
    """Match ribs to segments one to one, in order, per side (see the module docstring).

    Returns
    -------
    dict
        ``(segment index, side) -> Rib``.
    """
    out: dict[tuple[int, str], Rib] = {}
    for side in ("left", "right"):
        rs = [r for r in ribs if r.side == side]
        if not rs or not segments:
            continue
        m, n = len(rs), len(segments)
        fit = np.zeros((m, n))
        closed = [g.height_mm for g in segments if g.complete]
        nominal = float(np.median(closed)) if closed else 30.0
        for i, r in enumerate(rs):
            position = RIB_POSITION_LOW[i] if i < len(RIB_POSITION_LOW) else RIB_POSITION
            for j, g in enumerate(segments):
                # an open segment (cut by the scan or the column's end) is measured from its disc
                if g.complete:
                    rel = (r.s_mm - g.s_lo_mm) / g.height_mm
                elif g.closed_below:
                    rel = (r.s_mm - g.s_lo_mm) / nominal
                else:
                    rel = 1.0 - (g.s_hi_mm - r.s_mm) / nominal
                if RIB_REL_RANGE[0] <= rel <= RIB_REL_RANGE[1]:
                    d = (rel - position) / RIB_TOLERANCE
                    fit[i, j] = r.confidence * max(0.0, 1.0 - d * d)
        best = np.zeros((m + 1, n + 1))
        for i in range(1, m + 1):
            for j in range(1, n + 1):
                best[i, j] = max(best[i - 1, j], best[i, j - 1], best[i - 1, j - 1] + fit[i - 1, j - 1])
        i, j = m, n
        while i > 0 and j > 0:
            if best[i, j] == best[i - 1, j]:
                i -= 1
            elif best[i, j] == best[i, j - 1]:
                j -= 1
            else:
                if fit[i - 1, j - 1] > 0:
                    out[(segments[j - 1].index, side)] = rs[i - 1]
                i, j = i - 1, j - 1
    return out


def lung_fraction(col: Column, seg: Segment) -> float:
    """Fraction (0-1) of aerated lung beside the body of ``seg`` (the larger side)."""
    k0, k1 = col.index_of(seg.s_lo_mm + 0.25 * seg.height_mm), col.index_of(seg.s_hi_mm - 0.25 * seg.height_mm)
    u, v = col.u_mm, col.v_mm
    half = seg.width_mm / 2.0
    vb = float(np.median(col.body_v_mm[k0:k1 + 1]))
    rows = (v >= vb - seg.depth_mm / 2.0) & (v <= 10.0)
    fractions = []
    for sign in (-1.0, 1.0):
        cols = (sign * u >= half + LUNG_ZONE_MM[0]) & (sign * u <= half + LUNG_ZONE_MM[1])
        zone = col.straight[cols][:, rows, k0:k1 + 1]
        fractions.append(float((zone < LUNG_HU).mean()) if zone.size else 0.0)
    return max(fractions)


class AlaEvidence(NamedTuple):
    """Sacral alae in a segment's upper part (:func:`sacral_evidence`).

    Attributes
    ----------
    score : float
        0-1: the shorter ala's reach mapped from :data:`ALA_REACH_MM` (0 at its low
        end, 1 at its high end).
    reach_mm : float or None
        The shorter ala's reach from the mid-line (mm; 0 when none is found), None
        when the segment has no disc above it.
    """

    score: float
    reach_mm: float | None


def sacral_evidence(work: WorkGrid, col: Column, seg: Segment) -> AlaEvidence:
    """Sacral-ala score (0-1) and the shorter ala reach (mm) of ``seg``'s upper part.

    Planes 8, 14 and 20 mm below the segment's upper disc are sampled +-120 mm
    wide on the column's own frames there (they follow the sacral curve where the
    canal is tracked into the sacrum; beyond the column's end the frame at its end
    is carried straight on). Bone (> :data:`ALA_HU`) in the band
    :data:`ALA_BAND_MM` in front of the canal - the depth of the bodies, in front
    of the transverse processes - and connected, within the band, to the body at
    the mid-line is measured out to each side.

    Returns
    -------
    AlaEvidence
        ``(score, reach_mm)``; ``(0.0, None)`` when the segment has no disc above it.
    """
    if not seg.closed_above:
        return AlaEvidence(0.0, None)
    sp = col.spacing_mm
    u = np.arange(-120.0, 121.0, 2.0)
    v = np.arange(ALA_BAND_MM[0], ALA_BAND_MM[1] + 1.0, 2.0)
    U, V = np.meshgrid(u, v, indexing="ij")
    mid = np.abs(u) <= 4.0
    reach = 0.0
    for depth in ALA_PLANES_MM:
        if depth >= seg.height_mm:
            continue
        s = seg.s_hi_mm - depth
        k = col.index_of(s)
        f = col.frames[k]
        origin = col.centre_ijk[k] - f[0] * (s - col.s_mm[k]) / sp  # straight on beyond the column's end
        pts = origin[:, None, None] + (f[1][:, None, None] * U + f[2][:, None, None] * V) / sp
        plane = ndi.map_coordinates(work.hu, pts.reshape(3, -1), order=1, cval=-1024.0).reshape(U.shape)
        lab, _ = ndi.label(ndi.binary_closing(plane > ALA_HU, iterations=1))
        ids = np.unique(lab[mid][lab[mid] > 0])
        if len(ids) == 0:
            continue
        comp = np.isin(lab, ids).any(axis=1)
        left = u[comp & (u > 0)]
        right = -u[comp & (u < 0)]
        if len(left) and len(right):
            reach = max(reach, float(min(left.max(), right.max())))
    score = float(np.clip((reach - ALA_REACH_MM[0]) / (ALA_REACH_MM[1] - ALA_REACH_MM[0]), 0.0, 1.0))
    return AlaEvidence(score, reach)


def sacrum_segment(sacral: list[bool]) -> int | None:
    """Index of the first sacral segment, given which segments (caudal to cranial) show alae.

    The sacrum is the foot of the column: its first segment is the top of the lowest
    run of segments with alae (a segmented sacrum shows them on S1 and often S2).
    Ala-like bone higher up, with vertebrae free of it below, is not the sacrum.
    None when no segment shows alae.
    """
    if not any(sacral):
        return None
    i = sacral.index(True)
    while i + 1 < len(sacral) and sacral[i + 1]:
        i += 1
    return i


def gather_evidence(work: WorkGrid, col: Column, segments: tuple[Segment, ...]) -> ColumnEvidence:
    """Evidence for every segment, caudal to cranial, and the ribs it rests on."""
    ribs, overview, overview_s = find_ribs(work, col)
    sacra = [sacral_evidence(work, col, seg) for seg in segments]
    pelvis_top = None
    first = sacrum_segment([score >= 0.5 for score, _ in sacra])
    if first is not None and first < PELVIS_SEGMENTS and first + 1 < len(segments):
        pelvis_top = segments[first + 1].s_hi_mm
    if pelvis_top is not None:
        ribs = tuple(r for r in ribs if r.s_mm >= pelvis_top)
    matched = assign_ribs(ribs, segments)
    out = []
    for seg, (sacral, ala) in zip(segments, sacra):
        left, right = matched.get((seg.index, "left")), matched.get((seg.index, "right"))
        out.append(VertebraEvidence(
            segment=seg, rib_left=left.confidence if left else 0.0, rib_right=right.confidence if right else 0.0,
            rib_reach_left_mm=left.reach_mm if left else None, rib_reach_right_mm=right.reach_mm if right else None,
            lung=lung_fraction(col, seg), sacral=sacral, ala_mm=ala))
    return ColumnEvidence(tuple(out), ribs, overview, overview_s)
