"""Name the vertebrae of a column from the evidence of all of them at once.

The input is plain data: one :class:`Observation` per segment (caudal to
cranial), the output one :class:`Naming`. Nothing here reads images.

**Labellings and their scores** are those of :mod:`.scoring`: every offset of
the standard anatomy (12 rib pairs, 5 lumbar vertebrae) and of each transitional one,
scored by the evidence of every segment, sizes included.

**Decision** (:func:`name_segments`). Names are given only when

1. the best labelling is the standard anatomy, and neither end of the column is
   an unsplit run longer than 1.5 vertebrae - discs missed where an anchor, the
   sacrum or the ribs, might lie - unless it is the sacrum itself
   (:func:`unsplit_ends`);
2. it beats every other standard labelling that names a measured level
   differently by at least :data:`MIN_MARGIN` (log-likelihood units; 2.3 = ten
   times as likely). A transitional anatomy that differs from it only by its
   prior - 13 rib pairs when T1 is out of view - cannot be told apart by any
   evidence; the convention then names the lowest rib-bearing vertebra T12;
3. at least one anchor is in view and agrees with it: the sacrum (alae below
   the named L5; the top of the lowest run of segments with alae, since the
   sacrum is the foot of the column), the lowest rib pair (on the named T12, with a rib-free L1
   below) or the first rib pair (on the named T1, with a rib-free C7 above),
   and no anchor in view points elsewhere. A neighbour cut by the edge of the
   scan counts as rib-free only when at least :data:`.scoring.RIB_VISIBLE_FRACTION` of
   it is in view;
4. when the column reaches T1 or T2, the first rib pair is found and agrees:
   only the count from T1 tells 11 or 13 rib pairs from 12, so where it can be
   checked it must be;
5. when the names rest on the lowest rib pair alone and it is rudimentary
   (reaching under 60 mm: it may be a lumbar rib on L1), the column is refused;
6. every named level is consistent: no rib and no lung beside a lumbar name,
   ribs on T1, T11 and on every measured thoracic level (other upper thoracic
   ribs, crowded under the shoulder girdle, are not required), the sacrum
   under L5 when the segment below is in view, and a disc-to-disc height
   from T1 down (cervical segments above the first rib pair are neither drawn
   nor needed for the count, and the top of a chest CT often cuts them)
   within 0.55-1.6 times that expected at the patient's scale (two vertebrae
   merged by a missed disc are 1.8-2 times as tall, half a vertebra split off
   is 0.5).

With T1 out of view (an abdominal CT), 13 rib pairs with five lumbar
vertebrae cannot be told from 12 by any of this evidence: the lowest
rib-bearing vertebra is then named T12 by convention, and the names above L1
are wrong for that anatomy (a few per cent of people). L1-L5, counted from the
sacrum, stay right. Every labelling named without the first rib pair carries a
warning that says so.

Otherwise the column is refused with the reason, the best and runner-up
labellings and the anchors, so a reader can see which evidence conflicts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from ctbmd.segment.builtin.discs import UNSPLIT_PITCHES
from ctbmd.segment.builtin.evidence import sacrum_segment
from ctbmd.segment.builtin.scoring import (EXPECTED_SIZE_MM, SACRUM, SEEN, Labelling, Observation, labellings,
                                           rib_visible)

#: Smallest log-likelihood margin of the named labelling over any labelling that names differently.
MIN_MARGIN = float(np.log(10.0))
#: Lateral reach (mm) below which the lowest rib pair may be rudimentary lumbar ribs (on L1) rather
#: than 12th ribs: lumbar ribs are usually under 38 mm long, reaching about 60 mm from the canal.
SHORT_RIB_MM = 60.0
#: A disc-to-disc height outside this range of its scaled expectation fails the consistency check.
HEIGHT_RANGE = (0.55, 1.6)
#: The anchors: the first sacral segment, the lowest rib pair (on T12), the first rib pair (on T1).
AnchorKind = Literal["sacrum", "lowest_rib", "first_rib"]


@dataclass(frozen=True)
class Anchor:
    """An anatomical landmark in view and where it places the names.

    Attributes
    ----------
    kind : {"sacrum", "lowest_rib", "first_rib"}
    segment : int
        Index of the segment it marks (the first sacral segment, the lowest or the
        highest rib-bearing one).
    implies : str
        The name it gives that segment in standard anatomy (``"S"``, ``"T12"``, ``"T1"``).
    agrees : bool
        Whether the named labelling gives that segment that name.
    """

    kind: AnchorKind
    segment: int
    implies: str
    agrees: bool


@dataclass(frozen=True)
class Naming:
    """The outcome of naming a column.

    Attributes
    ----------
    names : tuple of str or None
        Per segment (caudal to cranial) its level name, ``"S"`` for the sacrum,
        or None (unnamed, or everything None when refused).
    best, runner_up : Labelling or None
        The best labelling and the best one that names a segment differently.
    margin : float
        ``best.score - runner_up.score`` (inf without a runner-up).
    anchors : tuple of Anchor
        Anchors in view.
    refusal : str or None
        Why no names were given; None when named.
    warnings : tuple of str
        Remarks on a named column (e.g. short T12 ribs).
    """

    names: tuple[str | None, ...]
    best: Labelling | None
    runner_up: Labelling | None
    margin: float
    anchors: tuple[Anchor, ...] = ()
    refusal: str | None = None
    warnings: tuple[str, ...] = field(default_factory=tuple)

    @property
    def named(self) -> bool:
        """True when the column was named."""
        return self.refusal is None


def unsplit_ends(obs: tuple[Observation, ...]) -> tuple[str, ...]:
    """Ends (``"below"``, ``"above"``) of the column whose open segment is an unsplit run.

    An open end segment taller than :data:`~.discs.UNSPLIT_PITCHES` times the
    median complete height holds vertebrae whose discs were missed, unless it is
    the sacrum (alae seen, at the lower end): an anchor there cannot be checked.
    """
    closed = [o.height_mm for o in obs if o.complete]
    if not obs or not closed:
        return ()
    nominal = float(np.median(closed))
    out = []
    for end, o in (("below", obs[0]), ("above", obs[-1])):
        if not o.complete and o.height_mm > UNSPLIT_PITCHES * nominal and not (end == "below" and o.sacral >= SEEN):
            out.append(end)
    return tuple(out)


def find_anchors(obs: tuple[Observation, ...], names: tuple[str | None, ...]) -> tuple[Anchor, ...]:
    """Anchors in view (see the module docstring), judged against ``names``."""
    out = []
    n = len(obs)
    i = sacrum_segment([o.closed_above and o.sacral >= SEEN for o in obs])
    if i is not None:
        out.append(Anchor("sacrum", i, SACRUM, names[i] == SACRUM))
    ribbed = [i for i, o in enumerate(obs) if o.rib >= SEEN]
    if ribbed:
        low = min(ribbed)
        below = low - 1
        if below >= 0 and rib_visible(obs, below) and all(obs[j].rib < SEEN for j in range(low)):
            out.append(Anchor("lowest_rib", low, "T12", names[low] == "T12"))
        high = max(ribbed)
        above = high + 1
        # the vertebra above must show its ribs: one cut short by the edge of the scan may not
        if above < n and rib_visible(obs, above) and obs[above].rib < SEEN:
            out.append(Anchor("first_rib", high, "T1", names[high] == "T1"))
    return tuple(out)


def relative_heights(obs: tuple[Observation, ...], names: tuple[str | None, ...]) -> dict[int, float]:
    """Disc-to-disc height of each complete segment named T1 to L6, over that expected for its name.

    The expectation is :data:`.scoring.EXPECTED_SIZE_MM` at the patient's scale, the median
    ratio over the labelling's complete named segments. Cervical names (above the
    first rib pair, neither drawn nor needed for the count, often cut by the top
    of a chest CT) are left out. Returns ``{segment index: ratio}``; a ratio above
    ``HEIGHT_RANGE[1]`` marks two vertebrae merged by a missed disc, below
    ``HEIGHT_RANGE[0]`` half a vertebra split off.
    """
    levels = [(o, nm) for o, nm in zip(obs, names) if nm not in (None, SACRUM)]
    ratios = [np.log(o.height_mm / EXPECTED_SIZE_MM[nm][1]) for o, nm in levels if o.complete and nm in EXPECTED_SIZE_MM]
    scale = float(np.exp(np.median(ratios))) if ratios else 1.0
    return {i: o.height_mm / (scale * EXPECTED_SIZE_MM[nm][1]) for i, (o, nm) in enumerate(zip(obs, names))
            if o.complete and nm in EXPECTED_SIZE_MM and not nm.startswith("C")}


def _consistency(obs: tuple[Observation, ...], names: tuple[str | None, ...],
                 reported: tuple[str, ...] | None = None) -> list[str]:
    problems = []
    heights = relative_heights(obs, names)
    for i, (o, nm) in enumerate(zip(obs, names)):
        if nm in (None, SACRUM):
            continue
        if nm.startswith("L") and o.rib >= SEEN:
            problems.append(f"{nm} would carry a rib")
        if nm.startswith("L") and nm != "L1" and o.lung >= SEEN:
            problems.append(f"{nm} would lie beside lung")
        checked = reported is None or nm in reported or nm in ("T1", "T11")
        if checked and nm.startswith("T") and int(nm[1:]) <= 11 and o.complete and o.rib < SEEN:
            problems.append(f"{nm} would carry no rib")
        if nm == "L5" and i > 0 and obs[i - 1].closed_above and names[i - 1] == SACRUM and obs[i - 1].sacral < SEEN:
            problems.append("the segment below L5 shows no sacral alae")
        if i in heights:
            rel = heights[i]
            if not HEIGHT_RANGE[0] <= rel <= HEIGHT_RANGE[1]:
                problems.append(f"{nm} would be {rel:.1f} times its expected height (a disc missed or a false one)")
    return problems


def name_segments(obs: tuple[Observation, ...], reported: tuple[str, ...] | None = None) -> Naming:
    """Name the segments of a column, or refuse with the reason (the module's decision rule).

    Parameters
    ----------
    obs : tuple of Observation
        One per segment, caudal to cranial.
    reported : tuple of str, optional
        Levels whose names must be certain (the measured levels); the margin is
        taken over labellings that name any segment differently when None.

    Returns
    -------
    Naming
        The names, or all None with the ``refusal`` reason; the best and
        runner-up labellings and the anchors either way.
    """
    if not obs:
        return Naming((), None, None, 0.0, refusal="no vertebra found along the column")
    ranked = labellings(obs)
    best = ranked[0]
    std = next((lab for lab in ranked if lab.standard), None)
    chosen = std if std is not None else best
    # The margin is taken over standard labellings: a transitional anatomy that differs from the
    # standard one only by its prior (13 rib pairs when T1 is out of view) cannot be told apart by
    # any evidence, and the convention then names the lowest rib-bearing vertebra T12
    # (Carrino et al. 2011). A transitional anatomy the evidence prefers is refused below.
    runner = next((lab for lab in ranked if lab.standard and lab is not chosen
                   and _differs(lab, chosen, reported)), None)
    margin = chosen.score - runner.score if runner is not None else float("inf")
    anchors = find_anchors(obs, chosen.names)
    unnamed = tuple(None for _ in obs)
    if not best.standard:
        return Naming(unnamed, best, std, best.score - (std.score if std else -np.inf), find_anchors(obs, best.names),
                      refusal=f"transitional anatomy suspected: the evidence fits {best.describe()} better than "
                              f"standard anatomy ({std.describe() if std else 'none'}); " + _anchor_text(obs, best.names))
    reason = _refusal(obs, chosen, runner, margin, anchors, reported)
    if reason is not None:
        return Naming(unnamed, chosen, runner, margin, anchors, refusal=reason)
    return Naming(chosen.names, chosen, runner, margin, anchors, warnings=_warnings(obs, chosen.names, anchors))


def _differs(lab: Labelling, ref: Labelling, reported: tuple[str, ...] | None) -> bool:
    """Whether ``lab`` names a segment differently from ``ref`` (only segments either names in ``reported``)."""
    pairs = list(zip(lab.names, ref.names))
    if reported is not None:
        pairs = [(a, b) for a, b in pairs if b in reported or a in reported]
    return any(a != b for a, b in pairs)


def _refusal(obs: tuple[Observation, ...], chosen: Labelling, runner: Labelling | None, margin: float,
             anchors: tuple[Anchor, ...], reported: tuple[str, ...] | None) -> str | None:
    """Why the standard labelling ``chosen`` cannot be given (rules 1-6 of the module), or None."""
    ends = unsplit_ends(obs)
    if ends:
        end = ends[0]
        o = obs[0] if end == "below" else obs[-1]
        return (f"the column runs {o.height_mm:.0f} mm {end} the {'lowest' if end == 'below' else 'highest'} "
                "disc found, more than a vertebra: discs were missed there, so an anchor there (sacrum or "
                "ribs) cannot be checked")
    if not any(a.agrees for a in anchors):
        return ("no anchor in view: neither the sacrum, nor the lowest rib pair with a rib-free "
                "vertebra below it, nor the first rib pair with a rib-free vertebra above it")
    if any(not a.agrees for a in anchors):
        return "anchors disagree: " + _anchor_text(obs, chosen.names)
    top = {"T1", "T2"} & set(chosen.names)
    if top and not any(a.kind == "first_rib" and a.agrees for a in anchors):
        # the top of the thorax is in view: the count from the first rib pair is checkable and must
        # be checked, or 11 and 13 rib pairs go unseen
        return (f"the column reaches {min(top)}, but the first rib pair is not found on a vertebra with "
                "a rib-free one above it, so the rib count (11, 12 or 13 pairs) cannot be checked")
    if margin < MIN_MARGIN:
        return (f"labelling uncertain: {chosen.describe()} is only {np.exp(margin):.1f} times as likely as "
                f"{runner.describe()}")
    problems = _consistency(obs, chosen.names, reported)
    if problems:
        return "inconsistent with " + chosen.describe() + ": " + "; ".join(problems)
    if {a.kind for a in anchors} == {"lowest_rib"}:
        low = next(a for a in anchors if a.kind == "lowest_rib")
        reach = obs[low.segment].rib_reach_mm
        if reach is not None and reach < SHORT_RIB_MM:
            # a rudimentary lowest rib may be a lumbar rib on L1 as well as a short 12th rib: with
            # nothing else to count from, the names would rest on a guess
            return (f"the lowest rib pair reaches only {reach:.0f} mm from the canal: it may be a "
                    "rudimentary lumbar rib as well as a short 12th rib, and neither the sacrum nor the "
                    "first rib is in view to count from")
    return None


def _warnings(obs: tuple[Observation, ...], names: tuple[str | None, ...],
              anchors: tuple[Anchor, ...]) -> tuple[str, ...]:
    """Remarks on a named column: a T12 without ribs, thoracic names that assume 12 rib pairs."""
    warnings = []
    for o, nm in zip(obs, names):
        if nm == "T12" and o.complete and o.rib < SEEN:
            warnings.append("T12 shows no rib (short or absent 12th ribs); levels rest on the other anchors")
    if any(nm and nm.startswith("T") for nm in names) and not any(
            a.kind == "first_rib" and a.agrees for a in anchors):
        # 13 rib pairs with T1 out of view look exactly like 12 (module note): say so
        warnings.append("thoracic names assume 12 rib pairs: T1 is not in view to count them; with 13 pairs "
                        "the vertebra named T12 would be a 13th rib-bearing one and each thoracic name one "
                        "level off (lumbar names, counted from the sacrum, hold)"
                        if any(a.kind == "sacrum" and a.agrees for a in anchors) else
                        "names rest on the lowest rib pair alone and assume 12 rib pairs: with 11 or 13 "
                        "pairs (T1 and the sacrum are out of view to tell) names would be one level off")
    return tuple(warnings)


def _anchor_text(obs: tuple[Observation, ...], names: tuple[str | None, ...]) -> str:
    parts = []
    for a in find_anchors(obs, names):
        here = names[a.segment]
        what = {"sacrum": "the sacrum", "lowest_rib": "the lowest rib pair", "first_rib": "the first rib pair"}[a.kind]
        if a.kind == "sacrum":
            parts.append(f"{what} lies under segment {a.segment + 1} from the bottom"
                         + (f", named {names[a.segment + 1]} above it" if a.segment + 1 < len(names) and names[a.segment + 1] else ""))
        else:
            parts.append(f"{what} is on segment {a.segment + 1} from the bottom (named {here or 'nothing'}, "
                         f"expected {a.implies})")
    return "; ".join(parts) if parts else "no anchor in view"
