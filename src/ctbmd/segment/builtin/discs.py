"""Find the intervertebral discs along the straightened column.

Method (``s`` is arc length along the canal, mm; see :mod:`.column`):

1. **Three cues per ``s``**, each read in the straightened column:

   * *centre*: mean HU in a square of side ``2r`` at the body centre, ``r`` = 30% of
     the body depth (4-8 mm);
   * *rim*: 90th-percentile HU 8-24 mm either side of the body centre, at its
     depth: the lateral cortex, which ends at the endplates on both sides of a
     disc;
   * *pedicles*: the fraction of bone (> 200 HU) 0.22-0.45 body widths either side
     of the canal centre, 4 mm in front of it to 6 mm behind: pedicles join the
     arch to the body at body level, the intervertebral foramina open at disc
     level, so one run of pedicle per vertebra.

2. **One disc signal**, the sum of three standardised terms (median, MAD):

   * the *pedicle edge* - bone below, foramen above, over 4 mm - read 3 mm lower,
     because the pedicle rises from the upper endplate, about half a disc below
     the disc's centre;
   * the *narrow-band response* of the centre and of the rim cue: the strongest
     contrast between a band 4-10 mm high and its two flanks, of either sign. A
     disc is a thin band (4-11 mm, Panjabi 1991/1992) against bodies 14-28 mm
     tall: dark between bright endplates in dense bodies, bright (endplates and
     disc blurred together) in sparse bodies or thick slices; a body at
     mid-height is a broad plateau and gives little response either way.

3. **Candidates** are the peaks of the smoothed signal, laid out along the line
   of body centres (in a lordosis the canal runs on the concave side and would
   shorten the vertebrae). A **chain** of candidates is chosen by dynamic
   programming over candidate pairs: it maximises the summed candidate values
   less a cost for every change of pitch between neighbours. Consecutive discs
   must lie 13-60 mm apart (C6 about 15 mm, L3 about 40 mm: Panjabi et al.,
   Spine 1991;16:861, 1991;16:888 and 1992;17:299; the upper limit leaves room
   for the bend at L5-S1, which lengthens the line of body centres) with a run
   of pedicle between them (every vertebra from C2 to L5 has pedicles). The
   pitch changes by a few per cent per level, so the chain cannot split a body
   at mid-height (half a pitch, then a full one: a 100% change) or skip a disc
   (a doubled pitch).

4. **Ends.** Where the column bends (L5-S1, the cervicothoracic junction) one
   pitch alone weighs against a disc at an end of the chain; a strong candidate
   (as strong as the chain's lower quartile) at 0.55-1.6 times the end pitch,
   with a pedicle between, is added there (:func:`.chain.extend_chain`).

5. **Missed discs, on request.** When the column runs on beyond an end disc for
   more than :data:`UNSPLIT_PITCHES` typical pitches, or a segment is as tall as
   two vertebrae of its level, a disc must lie there (every vertebra is bounded
   by discs; only the sacrum is a long solid run). :mod:`ctbmd.segment.builtin`
   then asks again with ``fill`` naming that end or ``split`` that segment, and
   the strongest candidate there (13-60 mm beyond the end, or 13 mm or more
   inside the segment) with a pedicle between is added whatever its strength
   (:func:`.chain.fill_chain`). The labelling built on it must still pass every check
   of :mod:`.naming`, so a weak disc that is not one ends in a refusal.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from ctbmd.segment.builtin.chain import PITCH_MIN_MM, best_chain, extend_chain, fill_chain, prominent_peaks
from ctbmd.segment.builtin.column import STEP_MM, Column

#: Offset (mm) from the pedicle's upper edge to the disc's centre: about half a disc (4-6 mm
#: thoracic, 8-11 mm lumbar; Panjabi 1991/1992), the pedicle rising from the upper endplate.
EDGE_OFFSET_MM = 3.0
#: Weights of the pedicle edge and the rim cue in the disc signal (the centre cue weighs 1).
EDGE_WEIGHT = 0.5
RIM_WEIGHT = 1.5
CENTRE_WEIGHT = 0.5
#: Bone threshold (HU) of the pedicle cue.
PEDICLE_HU = 200.0
#: Pedicle zone, as fractions of the body width from the mid-line: the pedicles lie beside the
#: canal, whose width is about half the body's, and are about a fifth of the body wide (Panjabi
#: 1991/1992); rib heads (thoracic) and facet joints (lumbar) lie further out.
PEDICLE_ZONE = (0.22, 0.45)
#: Depth of the pedicle zone (mm along v from the canal centre): the anterior half of the canal's
#: side walls, where the pedicles join the body; the laminae and facet joints lie further back and
#: reach down to the disc level, the rib heads further out.
PEDICLE_V_MM = (-4.0, 6.0)
#: A pedicle run reaches this fraction of the pedicle cue's 90th percentile. The sacrum's solid
#: mass fills the zone (cue 1) and sets that percentile on an abdominal CT, while a lumbar pedicle,
#: narrower than the zone, fills a quarter to four fifths of it; the foramen at a disc, and the
#: lower half of a body, leave it nearly empty (< 0.1).
PEDICLE_RUN_FRACTION = 0.2
#: An open end longer than this many typical disc-to-disc heights holds a missed disc (unless it is
#: the sacrum): the labeller cannot check an anchor there (:func:`.naming.unsplit_ends`).
UNSPLIT_PITCHES = 1.5
#: Half-window (mm) of the median body width that sizes the pedicle zone.
PEDICLE_WIDTH_WINDOW_MM = 40.0


@dataclass(frozen=True)
class DiscProfiles:
    """Per-``s`` disc cues along the column (arrays of shape ``(ns,)``, NaN where not measurable).

    Attributes
    ----------
    centre_hu, rim_hu : numpy.ndarray
        Mean HU at the body centre; 90th-percentile HU of the lateral rim zones.
    pedicle_fraction : numpy.ndarray
        Bone fraction of the pedicle zones (0-1).
    signal : numpy.ndarray
        Combined disc signal (higher: more disc-like), standardised units.
    """

    centre_hu: np.ndarray
    rim_hu: np.ndarray
    pedicle_fraction: np.ndarray
    signal: np.ndarray


@dataclass(frozen=True)
class Discs:
    """Intervertebral discs found along the column, caudal to cranial.

    Attributes
    ----------
    s_mm : numpy.ndarray
        float, shape ``(n,)``: arc length of each disc's mid-plane, ascending.
    strength : numpy.ndarray
        float, shape ``(n,)``: the disc signal there (standardised units).
    profiles : DiscProfiles
        The cues they were found from.
    """

    s_mm: np.ndarray
    strength: np.ndarray
    profiles: DiscProfiles


def disc_profiles(col: Column) -> DiscProfiles:
    """Measure the three disc cues along ``col`` and combine them (steps 1-2 of the module method)."""
    st, u, v = col.straight, col.u_mm, col.v_mm
    ns = st.shape[2]
    iu = lambda x: int(np.argmin(np.abs(u - x)))  # noqa: E731
    jv = lambda x: int(np.argmin(np.abs(v - x)))  # noqa: E731
    centre = np.full(ns, np.nan)
    rim = np.full(ns, np.nan)
    ped = np.full(ns, np.nan)
    rim_u = (np.abs(u) >= 8.0) & (np.abs(u) <= 24.0)
    ped_v = slice(jv(PEDICLE_V_MM[0]), jv(PEDICLE_V_MM[1]) + 1)
    width = ndi.median_filter(col.body_width_mm, int(2 * PEDICLE_WIDTH_WINDOW_MM / STEP_MM) + 1, mode="nearest")
    for k in range(ns):
        ped_u = (np.abs(u) >= PEDICLE_ZONE[0] * width[k]) & (np.abs(u) <= PEDICLE_ZONE[1] * width[k])
        vb = float(col.body_v_mm[k])
        r = float(np.clip(0.3 * col.body_depth_mm[k], 4.0, 8.0))
        plane = st[:, :, k]
        centre[k] = plane[iu(-r):iu(r) + 1, jv(vb - r):jv(vb + r) + 1].mean()
        rim[k] = np.percentile(plane[rim_u, jv(vb - 6.0):jv(vb + 6.0) + 1], 90)
        ped[k] = (plane[ped_u, ped_v] > PEDICLE_HU).mean()
    outside = centre < -300  # the plane left the scan (-1024 fill) or sits in air
    for a in (centre, rim, ped):
        a[outside] = np.nan
    return DiscProfiles(centre, rim, ped, _combine(centre, rim, ped))


def _standardise(x: np.ndarray) -> np.ndarray:
    ok = np.isfinite(x)
    if ok.sum() < 5:
        return np.zeros_like(x)
    med = np.median(x[ok])
    mad = 1.4826 * np.median(np.abs(x[ok] - med))
    return (x - med) / max(mad, 1e-6)


def _band(x: np.ndarray, half_mm: float, flank_mm: float = 6.0) -> np.ndarray:
    """Narrow-band response of a profile: mean of both flanks minus the mean of the band.

    Positive at a dark band of about ``2 * half_mm`` between brighter neighbours, negative
    at a bright band; near zero inside a broad plateau (a vertebral body at mid-height).
    """
    h = max(1, int(round(half_mm / STEP_MM)))
    f = max(1, int(round(flank_mm / STEP_MM)))
    band = ndi.uniform_filter1d(x, 2 * h + 1, mode="nearest")
    flank = ndi.uniform_filter1d(x, f, mode="nearest")
    off = h + (f + 1) // 2
    idx = np.arange(len(x))
    below = flank[np.clip(idx - off, 0, len(x) - 1)]
    above = flank[np.clip(idx + off, 0, len(x) - 1)]
    return (below + above) / 2.0 - band


def _combine(centre: np.ndarray, rim: np.ndarray, ped: np.ndarray) -> np.ndarray:
    """Disc signal from the three cues (step 2 of the module method).

    The pedicle cue enters as an edge - bone below, foramen above - read
    :data:`EDGE_OFFSET_MM` lower; the centre and rim cues as the largest
    magnitude of their narrow-band responses (:func:`_band`, half-widths 2, 3.5
    and 5 mm). Arrays of shape ``(ns,)``; NaN where a cue is missing.
    """
    ok = np.isfinite(centre) & np.isfinite(ped) & np.isfinite(rim)
    if ok.sum() < 5:
        return np.full_like(centre, np.nan)
    idx = np.arange(len(centre))
    fill = lambda x: np.interp(idx, idx[ok], x[ok])  # noqa: E731
    c, r, p = (ndi.gaussian_filter1d(fill(x), 1.0 / STEP_MM) for x in (centre, rim, ped))
    d = int(round(4.0 / STEP_MM))
    # bone below, foramen above; the pedicle's upper edge lies about half a disc below the disc's
    # centre (at the upper endplate), so the edge is read EDGE_OFFSET_MM lower
    at = np.clip(idx - int(round(EDGE_OFFSET_MM / STEP_MM)), 0, len(p) - 1)
    edge = p[np.clip(at - d, 0, len(p) - 1)] - p[np.clip(at + d, 0, len(p) - 1)]
    narrow = lambda x: np.max([np.abs(_band(x, h)) for h in (2.0, 3.5, 5.0)], axis=0)  # noqa: E731
    ze, zc, zr = (_standardise(np.where(ok, x, np.nan)) for x in (edge, narrow(c), narrow(r)))
    ze, zc, zr = (np.nan_to_num(z) for z in (ze, zc, zr))
    signal = EDGE_WEIGHT * ze + CENTRE_WEIGHT * zc + RIM_WEIGHT * zr
    signal = ndi.gaussian_filter1d(signal, 1.5 / STEP_MM)
    signal[~ok] = np.nan
    return signal


def find_discs(col: Column, fill: dict[str, int] | None = None,
               split: tuple[tuple[float, float], ...] = ()) -> Discs:
    """Find the discs along ``col`` (the module method).

    Parameters
    ----------
    col : Column
        The straightened column.
    fill : dict, optional
        ``{"below": k, "above": m}``: discs to add at each end of the chain, where
        the column was left unsplit (step 5 of the module method); none by default.
    split : tuple of (float, float)
        Arc-length intervals (mm, along the canal) each to be split by one more
        disc: segments as tall as two vertebrae (step 5 of the module method).

    Returns
    -------
    Discs
        Possibly empty (no measurable column, or no chain of at least two discs).
    """
    prof = disc_profiles(col)
    ok = np.isfinite(prof.signal)
    if ok.sum() < PITCH_MIN_MM / STEP_MM:
        return Discs(np.array([]), np.array([]), prof)
    # Pitches are measured along the line of body centres, not the canal: in a lordosis the
    # canal runs on the concave side and would shorten the lower lumbar vertebrae.
    arc = col.body_arc_mm()
    grid = np.arange(arc[0], arc[-1], STEP_MM)
    sig = np.interp(grid, arc, np.where(ok, prof.signal, np.nanmin(prof.signal)))
    good = np.interp(grid, arc, ok.astype(float)) > 0.5
    ped = np.interp(grid, arc, np.nan_to_num(prof.pedicle_fraction))
    idx, prom = prominent_peaks(sig, 0.3)
    keep = good[idx]
    idx, prom = idx[keep], prom[keep]
    if len(idx) == 0:
        return Discs(np.array([]), np.array([]), prof)
    value = np.maximum(5.0 + 3.0 * (sig[idx] + prom), 1.0)
    between = _pedicle_between(ped, idx)
    chain = extend_chain(grid[idx], value, best_chain(grid[idx], value, pedicle_between=between), between)
    if fill or split:
        splits = tuple((float(np.interp(lo, col.s_mm, arc)), float(np.interp(hi, col.s_mm, arc))) for lo, hi in split)
        chain = fill_chain(grid[idx], value, chain, between, fill, splits)
    at = grid[idx][chain]
    return Discs(np.interp(at, arc, col.s_mm), sig[idx][chain], prof)


def _pedicle_between(ped: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``out[b, a]``: whether a pedicle run lies between candidates ``idx[b] < idx[a]``.

    A run is a stretch where the pedicle cue reaches :data:`PEDICLE_RUN_FRACTION`
    of its 90th percentile over the column: every vertebra from C2 to L5 has
    pedicles, so a segment without one is half a vertebra (a split at mid-height)
    or no vertebra at all.
    """
    p = np.nan_to_num(ped, nan=0.0)
    level = PEDICLE_RUN_FRACTION * np.percentile(p[np.isfinite(ped)], 90) if np.isfinite(ped).any() else 0.0
    peak = np.maximum.reduceat(p, idx) if len(idx) else np.array([])  # max over [idx[i], idx[i+1])
    n = len(idx)
    out = np.zeros((n, n), bool)
    for b in range(n):
        out[b, b + 1:] = np.maximum.accumulate(peak[b:n - 1]) >= level if b < n - 1 else False
    return out
