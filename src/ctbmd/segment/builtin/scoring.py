"""Score every labelling of a column from the evidence of all its segments (plain data).

The input is one :class:`Observation` per segment, caudal to cranial; :mod:`.naming`
decides from the ranked labellings whether and how to name the column.

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
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product

import numpy as np

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
#: Confidence above which a rib, lung or ala counts as seen (anchors and consistency checks).
SEEN = 0.5
#: Spread (log units) of a body size around its scaled expectation, and the weight of the size term.
SIZE_SPREAD = 0.25
SIZE_WEIGHT = 0.5
#: A segment cut by the edge of the scan still shows whether it carries ribs when at least this
#: fraction of a whole neighbour's height is in view: the costal facets and transverse processes
#: lie in the upper half of a thoracic or lumbar vertebra, which a cut at the foot of the scan keeps,
#: and C7's transverse processes, where a cervical rib articulates, at its mid-height (Gray's
#: Anatomy), which a cut at the top keeps with a rib's half-thickness (about 0.1 of a height) to spare.
RIB_VISIBLE_FRACTION = 0.6
#: Name of the sacrum in a labelling.
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
