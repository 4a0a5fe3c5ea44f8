"""Genant's semi-quantitative fracture grade of a vertebral body from its heights and its neighbours'.

Part of :mod:`ctbmd.heights` (see there for the method): :func:`genant_grade` grades one
body against its own posterior height and its normal neighbours; :func:`grade_level` picks
the neighbours of a level among :func:`~ctbmd.heights.level_heights`. Genant et al., J Bone
Miner Res 1993;8:1137 (doi 10.1002/jbmr.5650080915): grade 1 from a 20% loss, 2 from 25%,
3 from 40%.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ctbmd.heights.profile import BodyHeights
from ctbmd.types import LEVEL_ORDER

#: Genant grade boundaries (fraction of height lost): grade 1 from 20%, 2 from 25%, 3 from 40%
#: (Genant et al., J Bone Miner Res 1993;8:1137, doi 10.1002/jbmr.5650080915).
GENANT_LOSS = (0.20, 0.25, 0.40)
#: ``suspected_fracture`` is raised from this Genant grade (1: a height loss of 20% or more).
FRACTURE_MIN_GRADE = 1
#: A neighbour is a reference for the Genant grade when its ``A / P`` and ``M / P`` lie in this range:
#: not itself deformed by 20% or more (grade 0, Genant 1993) and not taller in front than the normal
#: lumbosacral wedge of L5 (A / P about 1.2-1.3 on the shared example scan) allows.
NORMAL_SHAPE = (0.80, 1.40)
#: A crush keeps the body's proportions (every height lost alike, Genant 1993): ``A / P`` and
#: ``M / P`` within this range. A body much taller in front than behind, or cupped, that reads short
#: against its neighbours is a partial measurement, or another deformity graded as such.
CRUSH_SHAPE = (0.85, 1.20)
#: ... and its two neighbours agree (mean heights within this ratio): a short body next to a tall one
#: is a vertebra the labeller split too low (the neighbour took its endplate), not a crush.
CRUSH_NEIGHBOUR_SPREAD = 1.15
#: A wedge or biconcave loss against the posterior height counts only when the same height is also
#: at least this much (10%, half of Genant grade 1's 20%) below the normal neighbours' there: a
#: posterior height read too tall (a piece of the next vertebra on the posterior corner) leaves
#: the anterior height normal against the neighbours.
CONFIRM_LOSS = 0.10
#: Heights whose mean is under this fraction of the normal neighbours' are a failed measurement
#: (a body found only in part), not a fracture: even vertebra plana keeps about a quarter of its height.
MIN_HEIGHT_FRACTION = 0.20
#: The posterior height a wedge or biconcave loss is judged against is at most this multiple of
#: the normal neighbours' posterior height: the posterior wall of a wedge or biconcave fracture
#: stands (Genant 1993), so a posterior height far above the neighbours' is a measurement that
#: took in a piece of the next vertebra, not a reference.
POSTERIOR_CAP = 1.15
#: The kinds of deformity a grade names (:attr:`GenantGrade.kind`).
Deformity = Literal["wedge", "biconcave", "crush"]


@dataclass(frozen=True)
class GenantGrade:
    """Semi-quantitative fracture grade of one vertebra (Genant et al., J Bone Miner Res 1993;8:1137,
    doi 10.1002/jbmr.5650080915), from its measured heights (:func:`genant_grade`).

    Attributes
    ----------
    grade : int
        0 (normal, loss < 20%), 1 (mild, 20-25%), 2 (moderate, 25-40%), 3 (severe, >= 40%).
    kind : {'wedge', 'biconcave', 'crush'} or None
        ``"wedge"`` (anterior loss), ``"biconcave"`` (middle loss) or ``"crush"`` (all heights
        lost against the neighbours): the largest loss, when ``grade`` >= 1.
    loss : float
        That largest height loss, as a fraction (0.3 = 30%).
    ratios : dict
        The measured ratios, rounded to 0.001: ``anterior_posterior``, ``middle_posterior`` and,
        with measured neighbours, ``anterior_neighbours``, ``middle_neighbours``,
        ``posterior_neighbours`` and ``mean_neighbours`` (this body's height over the mean of its
        neighbours' same height).
    measured : bool
        False when the heights are implausible (a mean height under :data:`MIN_HEIGHT_FRACTION`
        of the neighbours': a failed measurement, not a fracture); then ``grade`` is 0 and the
        level is reported ungraded.
    """

    grade: int
    kind: Deformity | None
    loss: float
    ratios: dict[str, float]
    measured: bool = True


def genant_grade(own: BodyHeights, neighbours: Sequence[BodyHeights] = (),
                 slice_mm: float = 0.0) -> GenantGrade:
    """Genant semi-quantitative grade of a vertebral body from its heights and its neighbours'.

    Genant et al., J Bone Miner Res 1993;8:1137 (doi 10.1002/jbmr.5650080915): grade 1
    (mild) is a 20-25% reduction of the anterior, middle or posterior height, grade 2
    (moderate) 25-40%, grade 3 (severe) > 40%, judged against the same vertebra's posterior
    height (wedge, biconcave) or against the adjacent normal vertebrae (crush). Here:

    * **wedge**: anterior loss ``1 - A / P``; **biconcave**: middle loss ``1 - M / P``; with
      normal neighbours ``P`` is at most :data:`POSTERIOR_CAP` times their mean posterior height;
    * with normal neighbours (the nearest complete vertebra above and below whose own ratios
      ``A / P`` and ``M / P`` lie within :data:`NORMAL_SHAPE`: a fractured or mismeasured
      neighbour is no reference), the same height must also be at least :data:`CONFIRM_LOSS`
      below the neighbours' mean height there (``1 - A / A_n``, ``1 - M / M_n``), else the
      loss is not counted. A fractured endplate lowers a height against both references; a
      body segmented with a piece of the next vertebra on its posterior corner, or a normal
      body among tall-anterior ones, fails the second;
    * **crush**: ``1 - mean(A, M, P) / mean(A_n, M_n, P_n)`` against each of two normal
      neighbours, the smaller loss, for a body of even proportions (:data:`CRUSH_SHAPE`) between
      neighbours that agree (:data:`CRUSH_NEIGHBOUR_SPREAD`); a mean height under :data:`MIN_HEIGHT_FRACTION` of the
      neighbours' is a failed measurement (``measured`` False), not graded;
    * posterior loss alone is not graded: a posterior height below the anterior is the normal
      shape of L5 under the lumbosacral lordosis (and a mild one of the lordotic L4);
    * a loss smaller than one slice (``slice_mm``) is not graded, whatever its fraction: the
      endplates are then within the slice profile's partial volume of each other.

    Mild physiological anterior wedging at the thoracolumbar junction (up to 10-15% at
    T11-T12) stays below the 20% of grade 1.

    Parameters
    ----------
    own : BodyHeights
    neighbours : sequence of BodyHeights
        Complete neighbours (up to two) measured the same way; may be empty.
    slice_mm : float
        Slice thickness (or z spacing when larger), mm.

    Returns
    -------
    GenantGrade
    """
    a, m, p = own.anterior_mm, own.middle_mm, own.posterior_mm
    ratios: dict[str, float] = {}
    losses: dict[str, float] = {}
    if p <= 0:
        return GenantGrade(grade=0, kind=None, loss=0.0, ratios=ratios)
    ratios["anterior_posterior"] = round(a / p, 3)
    ratios["middle_posterior"] = round(m / p, 3)
    normal = [n for n in neighbours if _normal_shape(n)]
    reference = p
    if normal:
        npost = float(np.mean([n.posterior_mm for n in normal]))
        reference = min(p, POSTERIOR_CAP * npost)
    losses["wedge"] = _loss(a, reference, slice_mm)
    losses["biconcave"] = _loss(m, reference, slice_mm)
    if normal:
        na = float(np.mean([n.anterior_mm for n in normal]))
        nm = float(np.mean([n.middle_mm for n in normal]))
        mean_own = (a + m + p) / 3.0
        means = [(n.anterior_mm + n.middle_mm + n.posterior_mm) / 3.0 for n in normal]
        for name, h, ref in (("anterior", a, na), ("middle", m, nm), ("posterior", p, npost),
                             ("mean", mean_own, float(np.mean(means)))):
            ratios[f"{name}_neighbours"] = round(h / ref, 3)
        if mean_own < MIN_HEIGHT_FRACTION * float(np.mean(means)):
            return GenantGrade(grade=0, kind=None, loss=0.0, ratios=ratios, measured=False)
        for kind, h, ref in (("wedge", a, na), ("biconcave", m, nm)):
            if _loss(h, ref, slice_mm) < CONFIRM_LOSS:
                losses[kind] = 0.0
        if len(normal) >= 2 and _normal_shape(own, CRUSH_SHAPE) and max(means) <= CRUSH_NEIGHBOUR_SPREAD * min(means):
            losses["crush"] = min(_loss(mean_own, ref, slice_mm) for ref in means)
    kind = max(losses, key=losses.get)
    loss = losses[kind]
    grade = int(np.searchsorted(GENANT_LOSS, loss, side="right"))
    return GenantGrade(grade=grade, kind=kind if grade else None, loss=round(loss, 3), ratios=ratios)


def _normal_shape(h: BodyHeights, bounds: tuple[float, float] = NORMAL_SHAPE) -> bool:
    """True when ``A / P`` and ``M / P`` of ``h`` lie within ``bounds`` (:data:`NORMAL_SHAPE`: a reference for its neighbours)."""
    if h.posterior_mm <= 0:
        return False
    lo, hi = bounds
    return lo <= h.anterior_mm / h.posterior_mm <= hi and lo <= h.middle_mm / h.posterior_mm <= hi


def _loss(height: float, reference: float, slice_mm: float) -> float:
    """``1 - height / reference`` (0 when the reference is missing or the difference is under ``slice_mm``)."""
    if reference <= 0 or reference - height < slice_mm:
        return 0.0
    return 1.0 - height / reference


def grade_level(level: str, heights: dict[str, BodyHeights], slice_mm: float) -> GenantGrade | None:
    """Genant grade of ``level`` against its nearest complete neighbours in ``heights`` (None if unmeasurable).

    A level cut by the edge of the scan, whose body was not found, whose body in the CT
    and label disagree (``consistent`` False, :func:`~ctbmd.heights.level_heights`), or whose heights are
    implausible against its neighbours' (:attr:`GenantGrade.measured`), is not graded; such
    neighbours are no reference either.

    Parameters
    ----------
    level : str
        Level name, e.g. ``"L1"``.
    heights : dict
        :func:`~ctbmd.heights.level_heights` of the level and its neighbours.
    slice_mm : float
        Slice thickness or spacing (mm), whichever is larger: a loss within one slice is not graded.

    Returns
    -------
    GenantGrade or None
    """
    own = heights.get(level)
    if own is None or not own.complete or not own.consistent or own.posterior_mm <= 0:
        return None
    names = sorted(heights, key=LEVEL_ORDER.index)
    i = names.index(level)
    neighbours = [heights[n] for n in (names[i - 1] if i > 0 else None, names[i + 1] if i + 1 < len(names) else None)
                  if n is not None and heights[n].complete and heights[n].consistent]
    grade = genant_grade(own, neighbours, slice_mm)
    return grade if grade.measured else None
