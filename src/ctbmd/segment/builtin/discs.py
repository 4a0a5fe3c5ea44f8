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
   with a pedicle between, is added there (:func:`extend_chain`).

5. **Missed discs, on request.** When the column runs on beyond an end disc for
   more than :data:`UNSPLIT_PITCHES` typical pitches, or a segment is as tall as
   two vertebrae of its level, a disc must lie there (every vertebra is bounded
   by discs; only the sacrum is a long solid run). :mod:`ctbmd.segment.builtin`
   then asks again with ``fill`` naming that end or ``split`` that segment, and
   the strongest candidate there (13-60 mm beyond the end, or 13 mm or more
   inside the segment) with a pedicle between is added whatever its strength
   (:func:`fill_chain`). The labelling built on it must still pass every check
   of :mod:`.naming`, so a weak disc that is not one ends in a refusal.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from ctbmd.segment.builtin.column import STEP_MM, Column

#: Disc-to-disc distance (mm) of C6 to L5, with a margin for the bend at L5-S1 (Panjabi 1991/1992).
PITCH_MIN_MM = 13.0
PITCH_MAX_MM = 60.0
#: Chain cost per squared log-ratio of consecutive pitches: 10 for a 30% change, 72 for a halved or
#: doubled pitch (a body split at mid-height, a disc missed), more than a strong candidate is worth.
PITCH_CHANGE_COST = 150.0
#: Pitch of a disc added past an end of the chain, as a fraction of the end pitch
#: (:func:`extend_chain`).
END_PITCH_RATIO = (0.55, 1.6)
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


def prominent_peaks(x: np.ndarray, min_prominence: float) -> tuple[np.ndarray, np.ndarray]:
    """Local maxima of a 1-D signal whose topographic prominence is at least ``min_prominence``.

    The definitions of :func:`scipy.signal.find_peaks` with ``prominence=min_prominence``
    (and :func:`scipy.signal.peak_prominences` with no window), which this reproduces
    exactly (tested against it): a peak is a sample, or the middle sample (rounded
    down) of a flat run, higher than both neighbours; the signal's end samples are
    never peaks. Its prominence is its height above the higher of the two minima
    found walking left and right from it until the signal rises above the peak or
    ends. Written out here because importing :mod:`scipy.signal` costs about half a
    second, a sixth of a whole 3 mm run (issue 13), for these few lines.

    Parameters
    ----------
    x : numpy.ndarray
        float, shape ``(n,)``, finite.
    min_prominence : float
        Smallest prominence kept (same unit as ``x``).

    Returns
    -------
    peaks : numpy.ndarray
        int, indices of the peaks kept, increasing.
    prominences : numpy.ndarray
        float, their prominences.
    """
    x = np.asarray(x, float)
    peaks = []
    i, last = 1, len(x) - 1
    while i < last:
        if x[i - 1] < x[i]:
            ahead = i + 1
            while ahead < last and x[ahead] == x[i]:
                ahead += 1
            if x[ahead] < x[i]:
                peaks.append((i + ahead - 1) // 2)
                i = ahead
        i += 1
    prominences = []
    for p in peaks:
        higher_left = np.nonzero(x[:p] > x[p])[0]
        higher_right = np.nonzero(x[p + 1:] > x[p])[0]
        lo = higher_left[-1] + 1 if len(higher_left) else 0
        hi = p + 1 + higher_right[0] if len(higher_right) else len(x)
        prominences.append(x[p] - max(x[lo:p + 1].min(), x[p:hi].min()))
    peaks, prominences = np.array(peaks, int), np.array(prominences, float)
    keep = prominences >= min_prominence
    return peaks[keep], prominences[keep]


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


def extend_chain(s_mm: np.ndarray, value: np.ndarray, chain: list[int],
                 pedicle_between: np.ndarray | None = None) -> list[int]:
    """Extend a chain of discs past either end with strong candidates at a plausible pitch.

    The chain's pitch cost weighs a disc at an end against one neighbouring pitch only,
    and where the column bends - L5-S1, where the lumbosacral disc is wedge-shaped and
    L5's pitch along the body centres shortens, or the cervicothoracic junction - a
    well-marked disc can cost more than it is worth. Here a candidate beyond an end is
    added when its value reaches the chain's lower quartile and its pitch lies within
    :data:`END_PITCH_RATIO` of the end pitch (a body split at mid-height gives 0.5; a
    missed disc 2), with a pedicle run in between; repeated until none qualifies.

    Parameters
    ----------
    s_mm, value : numpy.ndarray
        Candidate positions (mm, ascending) and values, shape ``(n,)``.
    chain : list of int
        Indices of the chain, ascending (:func:`best_chain`).
    pedicle_between : numpy.ndarray, optional
        As in :func:`best_chain`.

    Returns
    -------
    list of int
        The extended chain, ascending.
    """
    chain = sorted(chain)
    if len(chain) < 2:
        return chain
    floor = float(np.percentile(value[chain], 25))
    while True:
        added = False
        for low in (True, False):
            a, b = (chain[0], chain[1]) if low else (chain[-1], chain[-2])
            ref = abs(s_mm[a] - s_mm[b])
            others = range(a) if low else range(a + 1, len(s_mm))
            best, best_v = None, floor
            for c in others:
                pitch = abs(s_mm[a] - s_mm[c])
                ok = PITCH_MIN_MM <= pitch <= PITCH_MAX_MM and END_PITCH_RATIO[0] <= pitch / ref <= END_PITCH_RATIO[1]
                if pedicle_between is not None:
                    ok = ok and bool(pedicle_between[min(a, c), max(a, c)])
                if ok and value[c] >= best_v:
                    best, best_v = c, value[c]
            if best is not None:
                chain = sorted(chain + [best])
                added = True
        if not added:
            return chain


def fill_chain(s_mm: np.ndarray, value: np.ndarray, chain: list[int], pedicle_between: np.ndarray | None,
               ends: dict[str, int] | None = None, splits: tuple[tuple[float, float], ...] = ()) -> list[int]:
    """Add the strongest plausible candidate where the chain must have missed a disc.

    * At an end (``ends[end]`` times): the candidate of highest ``value`` beyond
      that end of the chain, 13-60 mm from it (a vertebra's pitch, C6 to L5 with
      the lumbosacral bend: Panjabi 1991/1992);
    * inside an interval of ``splits`` (a segment as tall as two vertebrae): the
      candidate of highest ``value`` at least 13 mm from both its ends;

    with a pedicle run between it and its chain neighbours when
    ``pedicle_between`` is given, however weak. No ratio to the neighbouring
    pitch is asked: where the column bends most (L5-S1, C7-T1) the pitches along
    the body line are least regular, and the level-aware height check of
    :mod:`.naming` judges the vertebrae it makes. Used only where the strict chain
    was refused for it (module step 5).

    Parameters
    ----------
    s_mm, value : numpy.ndarray
        Candidate positions (mm, ascending) and values, shape ``(n,)``.
    chain : list of int
        Indices of the chain, ascending (:func:`extend_chain`).
    pedicle_between : numpy.ndarray or None
        As in :func:`best_chain`.
    ends : dict, optional
        ``{"below": k, "above": m}``: how many discs to add at each end.
    splits : tuple of (float, float)
        Intervals (mm, on the axis of ``s_mm``) each to be split by one disc.

    Returns
    -------
    list of int
        The chain with the added candidates, ascending.
    """
    chain = sorted(chain)

    def linked(a: int, c: int) -> bool:
        return pedicle_between is None or bool(pedicle_between[min(a, c), max(a, c)])

    def strongest(cands) -> int | None:
        cands = list(cands)
        return max(cands, key=lambda c: value[c]) if cands else None

    def between_neighbours(c: int) -> bool:
        below, above = [m for m in chain if m < c], [m for m in chain if m > c]
        return (not below or linked(below[-1], c)) and (not above or linked(c, above[0]))

    for lo, hi in splits:
        best = strongest(c for c in range(len(s_mm)) if c not in chain
                         and lo + PITCH_MIN_MM <= s_mm[c] <= hi - PITCH_MIN_MM and between_neighbours(c))
        if best is not None:
            chain = sorted(chain + [best])
    for end, count in (ends or {}).items():
        for _ in range(count):
            if not chain:
                break
            a = chain[0] if end == "below" else chain[-1]
            best = strongest(c for c in (range(a) if end == "below" else range(a + 1, len(s_mm)))
                             if PITCH_MIN_MM <= abs(s_mm[a] - s_mm[c]) <= PITCH_MAX_MM and linked(a, c))
            if best is None:
                break
            chain = sorted(chain + [best])
    return chain


def best_chain(s_mm: np.ndarray, value: np.ndarray, pedicle_between: np.ndarray | None = None) -> list[int]:
    """Indices (into ``s_mm``, ascending) of the best chain of disc candidates.

    A chain's worth is the sum of its members' ``value`` less
    :data:`PITCH_CHANGE_COST` times the squared log-ratio of consecutive pitches;
    consecutive members must lie 13-60 mm apart. Dynamic
    programming over candidate pairs (the last two members), vectorised over the
    third. A single candidate is returned when no pair qualifies.

    Parameters
    ----------
    s_mm : numpy.ndarray
        Candidate positions (mm), ascending, shape ``(n,)``.
    value : numpy.ndarray
        Candidate values (> 0), shape ``(n,)``.
    pedicle_between : numpy.ndarray, optional
        bool, shape ``(n, n)``: ``[b, a]`` true when a pedicle lies between candidates
        ``b`` and ``a``; pairs without one cannot be consecutive.
    """
    n = len(s_mm)
    if n == 0:
        return []
    s_mm = np.asarray(s_mm, float)
    value = np.asarray(value, float)
    pitch = s_mm[None, :] - s_mm[:, None]  # pitch[b, a] = s[a] - s[b]
    allowed = (pitch >= PITCH_MIN_MM) & (pitch <= PITCH_MAX_MM)
    if pedicle_between is not None:
        allowed &= pedicle_between
    best = np.where(allowed, value[:, None] + value[None, :], -np.inf)  # best[b, a]: chain ending ... b, a
    prev = np.full((n, n), -1)
    for a in range(n):
        for b in np.nonzero(allowed[:a, a])[0]:
            cs = np.nonzero(np.isfinite(best[:b, b]))[0]
            if len(cs) == 0:
                continue
            change = np.log(pitch[b, a] / pitch[cs, b])
            vals = best[cs, b] + value[a] - PITCH_CHANGE_COST * change ** 2
            j = int(np.argmax(vals))
            if vals[j] > best[b, a]:
                best[b, a], prev[b, a] = vals[j], int(cs[j])
    if not np.isfinite(best).any() or best.max() < value.max():
        return [int(np.argmax(value))]
    b, a = np.unravel_index(int(np.argmax(best)), best.shape)
    chain = [int(a), int(b)]
    while prev[b, a] >= 0:
        b, a = int(prev[b, a]), int(b)
        chain.append(b)
    return sorted(chain)
