"""The chain of discs: which disc candidates along the column are the intervertebral discs.

Plain data in, plain data out: candidate positions ``s_mm`` (mm along the line of body
centres, ascending), their values (the disc signal's strength, > 0) and, optionally,
whether a pedicle run lies between two candidates. :func:`ctbmd.segment.builtin.discs.find_discs`
measures these on the straightened column and calls, in order, :func:`prominent_peaks`
(the candidates), :func:`best_chain` (the chain), :func:`extend_chain` (strong discs past
its ends) and, when the naming asks for it, :func:`fill_chain` (discs where one was
missed). The method and its sources are in :mod:`ctbmd.segment.builtin.discs`.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

#: Disc-to-disc distance (mm) of C6 to L5, with a margin for the bend at L5-S1 (Panjabi 1991/1992).
PITCH_MIN_MM = 13.0
PITCH_MAX_MM = 60.0
#: Chain cost per squared log-ratio of consecutive pitches: 10 for a 30% change, 72 for a halved or
#: doubled pitch (a body split at mid-height, a disc missed), more than a strong candidate is worth.
PITCH_CHANGE_COST = 150.0
#: Pitch of a disc added past an end of the chain, as a fraction of the end pitch
#: (:func:`extend_chain`).
END_PITCH_RATIO = (0.55, 1.6)


class Peaks(NamedTuple):
    """Peaks of a 1-D signal (:func:`prominent_peaks`).

    Attributes
    ----------
    indices : numpy.ndarray
        int, shape ``(n,)``: sample indices of the peaks, increasing.
    prominences : numpy.ndarray
        float, shape ``(n,)``: their topographic prominences (unit of the signal).
    """

    indices: np.ndarray
    prominences: np.ndarray


def prominent_peaks(x: np.ndarray, min_prominence: float) -> Peaks:
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
    Peaks
        ``(indices, prominences)`` of the peaks kept, increasing.
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
    return Peaks(peaks[keep], prominences[keep])


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
