"""Name the vertebrae of a column from the evidence of all of them at once.

The input is plain data: one :class:`Observation` per segment (caudal to
cranial), the output one :class:`Naming`. Nothing here reads images.

**Labellings.** A labelling assigns consecutive names to the segments, caudal
to cranial, from one anatomy: ``R`` rib-bearing thoracic vertebrae (11, 12 or
13) and ``Lc`` lumbar vertebrae (4, 5 or 6), counted from C1 down (C1-C7,
T1-T``R``, L1-L``Lc``, then the sacrum), at every offset that fits the
column. Segments below the sacrum are left unnamed. The standard anatomy
(12 and 5) has prior probability about 0.85; each transitional variant about
0.04 (lumbosacral transitional vertebrae, 11 or 13 rib pairs: several per cent
each, Carrino et al., Radiology 2011, doi 10.1148/radiol.10090897).

**Score.** Each segment's evidence adds a log-likelihood ratio against an
uninformative background (probability 0.5): for a feature seen with
confidence ``c`` where the name predicts it with probability ``p``,
``log((p c + (1 - p)(1 - c)) / 0.5)``. Ribs count on each side; the lowest
rib pair may be short and missed (``p`` 0.85), C7 and lumbar vertebrae carry
ribs rarely (0.01-0.02). Lung lies beside T1-T10 (0.95), T11 (0.85), T12
(0.5), L1 (0.1) and never beside L2-L5. The first sacral segment shows alae
(0.95), the vertebra above it does not (0.05). Sizes add
``-0.5 ((log(observed / (scale expected))) / 0.25)^2`` for each body width and
disc-to-disc height, with the patient's scale fitted per labelling (Panjabi et
al., Spine 1991;16:861, 1991;16:888, 1992;17:299; :data:`EXPECTED_SIZE_MM`).

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
   scan counts as rib-free only when at least :data:`RIB_VISIBLE_FRACTION` of
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
from itertools import product

import numpy as np

from ctbmd.segment.builtin.discs import UNSPLIT_PITCHES
from ctbmd.segment.builtin.evidence import sacrum_segment

#: Approximate mean body width (upper endplate, mm) and disc-to-disc height (body plus one disc,
#: mm) per level, read from Panjabi et al., Spine 1991;16:861 (cervical), 1991;16:888 (thoracic)
#: and 1992;17:299 (lumbar). Only ratios between levels matter: the scale is fitted per patient.
EXPECTED_SIZE_MM: dict[str, tuple[float, float]] = {
    "C3": (17.0, 17.0), "C4": (18.0, 17.5), "C5": (19.0, 17.5), "C6": (21.0, 18.0), "C7": (22.0, 19.0),
    "T1": (24.0, 19.0), "T2": (24.5, 20.0), "T3": (25.0, 20.5), "T4": (26.0, 21.0), "T5": (27.0, 22.0),
    "T6": (28.0, 22.5), "T7": (29.0, 23.5), "T8": (30.0, 24.0), "T9": (32.0, 25.0), "T10": (35.0, 26.5),
    "T11": (38.0, 28.0), "T12": (40.0, 30.0), "T13": (41.0, 31.5), "L1": (42.0, 33.0), "L2": (44.0, 35.0),
    "L3": (46.0, 37.0), "L4": (48.0, 37.0), "L5": (50.0, 36.0), "L6": (50.0, 35.0),
}
#: Log prior of a transitional anatomy (per variant: 11 or 13 rib pairs, 4 or 6 lumbar vertebrae).
LOG_PRIOR_VARIANT = float(np.log(0.04))
#: Smallest log-likelihood margin of the named labelling over any labelling that names differently.
MIN_MARGIN = float(np.log(10.0))
#: Confidence above which a rib, lung or ala counts as seen (anchors and consistency checks).
SEEN = 0.5
#: Spread (log units) of a body size around its scaled expectation, and the weight of the size term.
SIZE_SPREAD = 0.25
SIZE_WEIGHT = 0.5
#: Lateral reach (mm) below which the lowest rib pair may be rudimentary lumbar ribs (on L1) rather
#: than 12th ribs: lumbar ribs are usually under 38 mm long, reaching about 60 mm from the canal.
SHORT_RIB_MM = 60.0
#: A disc-to-disc height outside this range of its scaled expectation fails the consistency check.
HEIGHT_RANGE = (0.55, 1.6)
#: A segment cut by the edge of the scan still shows whether it carries ribs when at least this
#: fraction of a whole neighbour's height is in view: the costal facets and transverse processes
#: lie in the upper half of a thoracic or lumbar vertebra, which a cut at the foot of the scan keeps,
#: and C7's transverse processes, where a cervical rib articulates, at its mid-height (Gray's
#: Anatomy), which a cut at the top keeps with a rib's half-thickness (about 0.1 of a height) to spare.
RIB_VISIBLE_FRACTION = 0.6
SACRUM = "S"


@dataclass(frozen=True)
class Observation:
    """Evidence of one segment, as plain numbers.

    Attributes
    ----------
    rib_left, rib_right : float
        Confidence (0-1) of a rib on each side.
    lung : float
        Fraction (0-1) of aerated lung beside the body.
    sacral : float
        Confidence (0-1) of sacral alae in its upper part.
    width_mm, height_mm : float
        Body width and disc-to-disc height (mm).
    complete : bool
        Discs bound it on both sides (its size is measurable, its ribs in view).
    closed_above : bool
        A disc bounds it above (its sacral score is measurable).
    rib_reach_mm : float or None
        Lateral reach (mm) of its longer rib, None without a rib.
    """

    rib_left: float
    rib_right: float
    lung: float
    sacral: float
    width_mm: float
    height_mm: float
    complete: bool = True
    closed_above: bool = True
    rib_reach_mm: float | None = None

    @property
    def rib(self) -> float:
        """The stronger side's rib confidence."""
        return max(self.rib_left, self.rib_right)


@dataclass(frozen=True)
class Labelling:
    """One candidate labelling of the column.

    Attributes
    ----------
    names : tuple of str or None
        One name per segment, caudal to cranial: ``"S"`` for the sacrum, ``None``
        below it.
    ribs, lumbar : int
        Rib-bearing thoracic and lumbar vertebrae of the anatomy assumed.
    score : float
        Log-likelihood ratio plus log prior.
    """

    names: tuple[str | None, ...]
    ribs: int
    lumbar: int
    score: float

    @property
    def standard(self) -> bool:
        """True for 12 rib pairs and 5 lumbar vertebrae."""
        return self.ribs == 12 and self.lumbar == 5

    @property
    def anatomy(self) -> str:
        """E.g. ``"12 rib pairs, 5 lumbar"``."""
        return f"{self.ribs} rib pairs, {self.lumbar} lumbar"

    def describe(self) -> str:
        """The named span, e.g. ``"T10-L5 over the sacrum (12 rib pairs, 5 lumbar)"``."""
        named = [n for n in self.names if n not in (None, SACRUM)]
        span = f"{named[-1]}-{named[0]}" if named else "nothing"
        tail = " over the sacrum" if SACRUM in self.names else ""
        return f"{span}{tail} ({self.anatomy})"


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

    kind: str
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


def anatomy_sequence(ribs: int, lumbar: int) -> tuple[str, ...]:
    """Level names from the sacrum upward for an anatomy: ``("S", "L5", ..., "L1", "T12", ..., "C1")``.

    With 13 rib pairs the extra thoracic vertebra is ``"T13"`` and with 6 lumbar
    ``"L6"`` (VerSe names); with 11 rib pairs the names stay T1-T12, but T12 has
    no ribs (:func:`expects_rib`).
    """
    thoracic = 13 if ribs == 13 else 12
    up = [SACRUM] + [f"L{i}" for i in range(lumbar, 0, -1)] + [f"T{i}" for i in range(thoracic, 0, -1)]
    return tuple(up + [f"C{i}" for i in range(7, 0, -1)])


def expects_rib(name: str, ribs: int) -> float:
    """Probability that a rib is seen on one side of vertebra ``name`` when the anatomy has ``ribs`` pairs."""
    if name.startswith("T"):
        level = int(name[1:])
        last = 13 if ribs == 13 else (11 if ribs == 11 else 12)
        if level > last:
            return 0.02  # T12 of an anatomy with 11 rib pairs
        return 0.85 if level == last else 0.97
    if name == "L1":
        return 0.02
    return 0.01  # C7 (cervical ribs) and L2-L6 carry ribs rarely


def expects_lung(name: str) -> float:
    """Probability that aerated lung lies beside the body of vertebra ``name``."""
    if name.startswith("T"):
        level = int(name[1:])
        return 0.95 if level <= 10 else (0.85 if level == 11 else 0.5)
    if name == "C7":
        return 0.6
    if name == "L1":
        return 0.1
    return 0.02 if name.startswith("L") else (0.3 if name.startswith("C") else 0.01)


def rib_visible(obs: tuple[Observation, ...], i: int) -> bool:
    """Whether segment ``i`` shows if it carries ribs: complete, or cut by the scan's edge with at least
    :data:`RIB_VISIBLE_FRACTION` of its whole neighbour's height in view."""
    o = obs[i]
    if o.complete:
        return True
    near = [obs[j].height_mm for j in (i - 1, i + 1) if 0 <= j < len(obs) and obs[j].complete]
    whole = [x.height_mm for x in obs if x.complete]
    ref = near[0] if near else (float(np.median(whole)) if whole else None)
    return ref is not None and o.height_mm >= RIB_VISIBLE_FRACTION * ref


def _llr(p: float, c: float) -> float:
    c = min(max(c, 0.02), 0.98)
    return float(np.log((p * c + (1.0 - p) * (1.0 - c)) / 0.5))


def _size_term(obs: tuple[Observation, ...], names: tuple[str | None, ...]) -> float:
    ratios_w, ratios_h = [], []
    for o, n in zip(obs, names):
        if n is None or n == SACRUM or n not in EXPECTED_SIZE_MM:
            continue
        w, h = EXPECTED_SIZE_MM[n]
        ratios_w.append(np.log(o.width_mm / w))
        if o.complete:
            ratios_h.append(np.log(o.height_mm / h))
    total = 0.0
    for r in (ratios_w, ratios_h):
        if len(r) >= 2:
            r = np.asarray(r)
            total += -0.5 * float(np.sum(((r - np.median(r)) / SIZE_SPREAD) ** 2))
    return SIZE_WEIGHT * total


def score_labelling(obs: tuple[Observation, ...], names: tuple[str | None, ...], ribs: int, lumbar: int) -> float:
    """Log-likelihood ratio of a labelling plus the log prior of its anatomy (see the module docstring)."""
    total = 0.0 if (ribs, lumbar) == (12, 5) else LOG_PRIOR_VARIANT * ((ribs != 12) + (lumbar != 5))
    for i, (o, n) in enumerate(zip(obs, names)):
        if n is None:
            continue
        if n == SACRUM:
            if o.closed_above:
                total += _llr(0.95, o.sacral)
            continue
        p_rib = expects_rib(n, ribs)
        visible = rib_visible(obs, i)
        for c in (o.rib_left, o.rib_right):
            # a segment cut short may have its rib out of view: then only a rib seen counts
            total += _llr(p_rib, c) if (visible or c >= SEEN) else 0.0
        total += _llr(expects_lung(n), o.lung)
        if o.closed_above:
            total += _llr(0.01, o.sacral)
    return total + _size_term(obs, names)


def labellings(obs: tuple[Observation, ...]) -> list[Labelling]:
    """Every labelling of the column (each anatomy, each offset), best first."""
    out = []
    n = len(obs)
    for ribs, lumbar in product((11, 12, 13), (4, 5, 6)):
        seq = anatomy_sequence(ribs, lumbar)
        for first in range(-n + 1, len(seq) - n + 1):  # seq position of segment 0; < 0: below the sacrum
            names = tuple(seq[first + i] if first + i >= 0 else None for i in range(n))
            if all(x is None for x in names):
                continue
            out.append(Labelling(names, ribs, lumbar, score_labelling(obs, names, ribs, lumbar)))
    return sorted(out, key=lambda lab: -lab.score)


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

    The expectation is :data:`EXPECTED_SIZE_MM` at the patient's scale, the median
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
    """
    if not obs:
        return Naming((), None, None, 0.0, refusal="no vertebra found along the column")
    ranked = labellings(obs)
    best = ranked[0]
    std = next((lab for lab in ranked if lab.standard), None)

    def differs(lab: Labelling, ref: Labelling) -> bool:
        pairs = list(zip(lab.names, ref.names))
        if reported is not None:
            pairs = [(a, b) for a, b in pairs if b in reported or a in reported]
        return any(a != b for a, b in pairs)

    chosen = std if std is not None else best
    # The margin is taken over standard labellings: a transitional anatomy that differs from the
    # standard one only by its prior (13 rib pairs when T1 is out of view) cannot be told apart by
    # any evidence, and the convention then names the lowest rib-bearing vertebra T12
    # (Carrino et al. 2011). A transitional anatomy the evidence prefers is refused below.
    runner = next((lab for lab in ranked if lab.standard and lab is not chosen and differs(lab, chosen)), None)
    margin = chosen.score - runner.score if runner is not None else float("inf")
    anchors = find_anchors(obs, chosen.names)
    unnamed = tuple(None for _ in obs)

    def refuse(reason: str) -> Naming:
        return Naming(unnamed, chosen, runner, margin, anchors, refusal=reason)

    if not best.standard:
        return Naming(unnamed, best, std, best.score - (std.score if std else -np.inf), find_anchors(obs, best.names),
                      refusal=f"transitional anatomy suspected: the evidence fits {best.describe()} better than "
                              f"standard anatomy ({std.describe() if std else 'none'}); " + _anchor_text(obs, best.names))
    ends = unsplit_ends(obs)
    if ends:
        end = ends[0]
        o = obs[0] if end == "below" else obs[-1]
        return refuse(f"the column runs {o.height_mm:.0f} mm {end} the {'lowest' if end == 'below' else 'highest'} "
                      "disc found, more than a vertebra: discs were missed there, so an anchor there (sacrum or "
                      "ribs) cannot be checked")
    if not any(a.agrees for a in anchors):
        return refuse("no anchor in view: neither the sacrum, nor the lowest rib pair with a rib-free "
                      "vertebra below it, nor the first rib pair with a rib-free vertebra above it")
    disagree = [a for a in anchors if not a.agrees]
    if disagree:
        return refuse("anchors disagree: " + _anchor_text(obs, chosen.names))
    top = {"T1", "T2"} & set(chosen.names)
    if top and not any(a.kind == "first_rib" and a.agrees for a in anchors):
        # the top of the thorax is in view: the count from the first rib pair is checkable and must
        # be checked, or 11 and 13 rib pairs go unseen
        return refuse(f"the column reaches {min(top)}, but the first rib pair is not found on a vertebra with "
                      "a rib-free one above it, so the rib count (11, 12 or 13 pairs) cannot be checked")
    if margin < MIN_MARGIN:
        return refuse(f"labelling uncertain: {chosen.describe()} is only {np.exp(margin):.1f} times as likely as "
                      f"{runner.describe()}")
    problems = _consistency(obs, chosen.names, reported)
    if problems:
        return refuse("inconsistent with " + chosen.describe() + ": " + "; ".join(problems))
    warnings = []
    for o, nm in zip(obs, chosen.names):
        if nm == "T12" and o.complete and o.rib < SEEN:
            warnings.append("T12 shows no rib (short or absent 12th ribs); levels rest on the other anchors")
    if any(nm and nm.startswith("T") for nm in chosen.names) and not any(
            a.kind == "first_rib" and a.agrees for a in anchors):
        # 13 rib pairs with T1 out of view look exactly like 12 (module note): say so
        warnings.append("thoracic names assume 12 rib pairs: T1 is not in view to count them; with 13 pairs "
                        "the vertebra named T12 would be a 13th rib-bearing one and each thoracic name one "
                        "level off (lumbar names, counted from the sacrum, hold)"
                        if any(a.kind == "sacrum" and a.agrees for a in anchors) else
                        "names rest on the lowest rib pair alone and assume 12 rib pairs: with 11 or 13 "
                        "pairs (T1 and the sacrum are out of view to tell) names would be one level off")
    kinds = {a.kind for a in anchors}
    if kinds == {"lowest_rib"}:
        low = next(a for a in anchors if a.kind == "lowest_rib")
        reach = obs[low.segment].rib_reach_mm
        if reach is not None and reach < SHORT_RIB_MM:
            # a rudimentary lowest rib may be a lumbar rib on L1 as well as a short 12th rib: with
            # nothing else to count from, the names would rest on a guess
            return refuse(f"the lowest rib pair reaches only {reach:.0f} mm from the canal: it may be a "
                          "rudimentary lumbar rib as well as a short 12th rib, and neither the sacrum nor the "
                          "first rib is in view to count from")
    return Naming(chosen.names, chosen, runner, margin, anchors, warnings=tuple(warnings))


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
