"""Built-in vertebra segmentation and labelling: no learned weights, no downloads.

Method (all distances in mm, on a 2 mm isotropic working grid in the canonical
LPS frame; labels are mapped back to the CT grid by nearest neighbour):

1. **Body outline**: the largest connected region above -400 HU.
2. **Spine axis**: in each axial slice, the median position of bone (> 150 HU)
   in a +-30 mm band around the body's mid-line, in the posterior half of the
   body; median- and Gaussian-filtered along z. It runs between the vertebral
   bodies and the arches.
3. **Body-centre line**: in each slice, the most posterior closed region above
   100 HU (150 or 200 HU where that region is larger than any vertebral body,
   as when it has merged with enhanced soft tissue) of at least 150 mm^2 (an enhanced aorta lies further anterior) in a
   window 35 mm either side of the axis, from 55 mm anterior of it to 2 mm
   posterior (wide enough to hold a whole lumbar body); its centroid,
   filtered along z.
4. **Discs**: per slice, three cues around the body-centre line: the mean HU
   in a 10 mm-radius disc (it dips at each intervertebral disc between the
   bright endplates, the sagittal intensity cue of classical spine labelling,
   e.g. Glocker et al., MICCAI 2012), the bone fraction of the pedicle zones
   (pedicles at body level, foramina at disc level) and the 90th-percentile HU
   of the lateral cortical rims (bright at body level, soft tissue at disc
   level, :func:`_rim_profile`). In sparse (osteoporotic, fatty) bodies or thick
   slices the centre is darker at mid-body than at the disc, so the centre cue
   is weighted by its correlation with the pedicle cue, which may turn it
   round. The best-scoring chain of candidate discs 24-48 mm apart (one
   vertebral pitch) is kept (:func:`_find_discs`). Each disc is a plane through
   the centre line, perpendicular to it.
5. **Vertebrae**: bone (> 100 HU, closed by 4 mm, holes filled per slice except
   the spinal canal, enhanced vessels in front of the body cut off by
   :func:`_anterior_limits`) in a box
   around the centre line that is 3-D connected to the bodies, split between
   consecutive disc planes.
6. **Labels from anatomical anchors** (the two-anchor check recommended for
   transitional anatomy, e.g. Carrino et al., Radiology 2011, doi
   10.1148/radiol.10090897):

   * *Sacrum*: the segment below the lowest disc spans at least 24 mm along
     the column and its bone (> 100 HU) reaches at least 100 mm from side to side
     (sacral alae; an L5 with transverse processes spans about 80-90 mm);
     the segment above it is L5.
   * *Lowest rib-bearing vertebra*: a segment with a rib, a bone piece outside
     the column (cut 30 mm either side of the centre line, so ribs fused with
     transverse processes by blur keep their lateral part) whose medial end
     lies within 40 mm of the centre line at that segment's height
     and which reaches at least 60 mm lateral (lumbar transverse processes
     reach about 35-50 mm), directly above a complete segment without ribs;
     it is T12.

   With both anchors and a disagreement, labels follow the sacrum and the
   result carries a transitional-anatomy warning. With neither,
   :class:`~ctbmd.errors.NoSpineError` is raised: no levels are guessed.
"""

from __future__ import annotations

from dataclasses import dataclass

import cc3d
import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi
from scipy.signal import find_peaks

from ctbmd.errors import NoSpineError
from ctbmd.io import array_to_image, grid_reference_image, image_to_array
from ctbmd.masks import largest_component
from ctbmd.types import VERSE_LABELS, CTVolume, Grid, SpineSegmentation

WORK_SPACING_MM = 2.0
BODY_HU = -400.0
AXIS_BONE_HU = 150.0
CENTRE_BONE_HU = 100.0
#: Thresholds tried in turn for the body-centre region: contrast-enhanced soft tissue
#: (portal venous phase, about 100 HU) merges with the body at 100 HU.
CENTRE_BONE_HU_STEPS = (CENTRE_BONE_HU, 150.0, 200.0)
#: Largest axial area (mm^2) of a vertebral body T10-L5 (about 50 x 40 mm).
BODY_AREA_MAX_MM2 = 2500.0
VERTEBRA_HU = 100.0
#: Disc-to-disc distance (mm) of T10-L5: 24-48 mm (Panjabi et al., Spine 1991/1992).
PITCH_MIN_MM = 24.0
PITCH_MAX_MM = 48.0
SACRUM_MIN_LENGTH_MM = 24.0
SACRUM_MIN_WIDTH_MM = 100.0
RIB_MEDIAL_MAX_MM = 40.0
RIB_LATERAL_MIN_MM = 60.0
SPINE_CORE_HALF_WIDTH_MM = 30.0
#: Cost per squared per-cent change of pitch between consecutive vertebrae (see _best_chain).
PITCH_CHANGE_COST = 0.2
#: Levels ctbmd reports (T11 to L5).
REPORTED_LEVELS = ("T11", "T12", "L1", "L2", "L3", "L4", "L5")
_LUMBAR_UP = ("L5", "L4", "L3", "L2", "L1", "T12", "T11", "T10", "T9")


@dataclass(frozen=True)
class _Working:
    hu: np.ndarray  # (nx, ny, nz) on the 2 mm grid
    grid: Grid


def _to_working_grid(ct: CTVolume) -> _Working:
    image = array_to_image(ct.hu, ct.grid)
    sigma = [max(0.0, (WORK_SPACING_MM - s) / 2.0) for s in ct.grid.spacing_mm]
    if max(sigma) > 0:
        image = sitk.SmoothingRecursiveGaussian(image, [max(s, 1e-3) for s in sigma])
    size = [max(1, int(round(n * s / WORK_SPACING_MM))) for n, s in zip(ct.grid.size, ct.grid.spacing_mm)]
    # Keep the first voxel's outer corner: centre of working voxel 0 sits half a working voxel inside it.
    origin = ct.index_to_lps(np.array([(WORK_SPACING_MM / s - 1.0) / 2.0 for s in ct.grid.spacing_mm]))
    grid = Grid(size=tuple(size), spacing_mm=(WORK_SPACING_MM,) * 3,
                origin_lps_mm=tuple(float(v) for v in origin), direction=ct.grid.direction)
    ref = grid_reference_image(grid, sitk.sitkFloat32)
    hu = image_to_array(sitk.Resample(image, ref, sitk.Transform(), sitk.sitkLinear, -1024.0, sitk.sitkFloat32))
    return _Working(hu=hu, grid=grid)


def _fill_line(values: np.ndarray, window: int, sigma: float) -> np.ndarray | None:
    """Median- then Gaussian-filter an (nz, 2) track, interpolating NaN slices."""
    z = np.arange(len(values))
    ok = np.isfinite(values[:, 0])
    if ok.sum() < 3:
        return None
    out = np.stack([np.interp(z, z[ok], ndi.median_filter(values[ok, i], window, mode="nearest"))
                    for i in range(values.shape[1])], axis=1)
    return ndi.gaussian_filter1d(out, sigma, axis=0, mode="nearest")


def _spine_axis(hu: np.ndarray, body: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sp = WORK_SPACING_MM
    nz = hu.shape[2]
    xmid = float(np.median(np.nonzero(body)[0][:: max(1, int(body.sum()) // 200000)]))
    pts = np.full((nz, 2), np.nan)
    x0, x1 = max(0, int(xmid - 30 / sp)), int(xmid + 30 / sp)
    for k in range(nz):
        bz = body[:, :, k]
        ys = np.nonzero(bz.any(axis=0))[0]
        if len(ys) < 10:
            continue
        ycen = int((ys[0] + ys[-1]) / 2)
        m = (hu[x0:x1, ycen:, k] > AXIS_BONE_HU) & bz[x0:x1, ycen:]
        if m.sum() * sp * sp < 80:
            continue
        ii, jj = np.nonzero(m)
        pts[k] = [np.median(ii) + x0, np.median(jj) + ycen]
    return pts, np.isfinite(pts[:, 0])


def _body_centres(hu: np.ndarray, axis: np.ndarray) -> np.ndarray:
    sp = WORK_SPACING_MM
    nx, ny, nz = hu.shape
    centres = np.full((nz, 2), np.nan)
    for k in range(nz):
        xa, ya = axis[k]
        x0, x1 = max(0, int(xa - 35 / sp)), min(nx, int(xa + 35 / sp))
        y0, y1 = max(0, int(ya - 55 / sp)), min(ny, int(ya + 2 / sp))
        if x1 - x0 < 5 or y1 - y0 < 5:
            continue
        for threshold in CENTRE_BONE_HU_STEPS:
            m = ndi.binary_fill_holes(ndi.binary_closing(hu[x0:x1, y0:y1, k] > threshold))
            lab, n = ndi.label(m)
            if n == 0:
                break
            sizes = np.bincount(lab.ravel())[1:]
            big = np.nonzero(sizes * sp * sp >= 150)[0]
            if len(big) == 0:
                break
            # the body abuts the axis; an enhanced aorta lies further anterior: take the most posterior
            ys_c = [ndi.center_of_mass(lab == j + 1)[1] for j in big]
            j = int(big[int(np.argmax(ys_c))])
            if sizes[j] * sp * sp > BODY_AREA_MAX_MM2:
                continue  # merged with enhanced soft tissue: raise the threshold
            c = ndi.center_of_mass(lab == j + 1)
            centres[k] = [c[0] + x0, c[1] + y0]
            break
    return centres


def _disc_profile(hu: np.ndarray, centres: np.ndarray, valid: np.ndarray) -> np.ndarray:
    sp = WORK_SPACING_MM
    r = int(np.ceil(10 / sp))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    disk = (xx ** 2 + yy ** 2) * sp * sp <= 100.0
    prof = np.full(hu.shape[2], np.nan)
    for k in np.nonzero(valid)[0]:
        xc, yc = np.round(centres[k]).astype(int)
        patch = hu[max(0, xc - r):xc + r + 1, max(0, yc - r):yc + r + 1, k]
        if patch.shape != disk.shape:
            continue
        prof[k] = float(patch[disk].mean())
    return prof


def _rim_profile(hu: np.ndarray, centres: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """90th-percentile HU of the two lateral rim zones of the vertebral body, per slice.

    The zones lie 8-26 mm left and right of the body centre and 14 mm anterior
    to 2 mm posterior of it. At body level they hold the lateral cortical rim,
    which stays bright even when the trabecular bone inside is sparser than the
    disc (osteoporosis, fatty marrow) or when thick slices blur the endplates
    into the disc; at disc level they hold only disc and psoas. The aorta, which
    lies further anterior, and the rib heads, which lie further posterior, are
    kept out of the zones, so contrast and ribs do not mimic a rim.
    """
    sp = WORK_SPACING_MM
    rx, ry0, ry1 = int(np.ceil(26 / sp)), int(np.floor(-14 / sp)), int(np.ceil(2 / sp))
    xx, yy = np.mgrid[-rx:rx + 1, ry0:ry1 + 1]
    zone = np.abs(xx) * sp >= 8.0
    prof = np.full(hu.shape[2], np.nan)
    for k in np.nonzero(valid)[0]:
        xc, yc = np.round(centres[k]).astype(int)
        if xc - rx < 0 or yc + ry0 < 0:
            continue
        patch = hu[xc - rx:xc + rx + 1, yc + ry0:yc + ry1 + 1, k]
        if patch.shape != zone.shape:
            continue
        prof[k] = float(np.percentile(patch[zone], 90))
    return prof


def _pedicle_profile(hu: np.ndarray, centres: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Fraction of bone (> 200 HU) in the two pedicle zones behind the body centre, per slice.

    Pedicles join the arch to the body at body level; at disc level the same zones
    hold the intervertebral foramina (fat and nerve roots), so this profile is low
    at discs and high at mid-body, where the centre profile can dip as well.
    """
    sp = WORK_SPACING_MM
    out = np.full(hu.shape[2], np.nan)
    for k in np.nonzero(valid)[0]:
        xc, yc = centres[k]
        y0, y1 = int(yc + 8 / sp), int(yc + 32 / sp) + 1
        fractions = []
        for sign in (-1, 1):
            xa, xb = sorted((xc + sign * 6 / sp, xc + sign * 24 / sp))
            region = hu[max(0, int(xa)):int(xb) + 1, max(0, y0):max(0, y1), k]
            fractions.append(float((region > 200).mean()) if region.size else 0.0)
        out[k] = float(np.mean(fractions))
    return out


def _find_discs(profile: np.ndarray, pedicle: np.ndarray, rim: np.ndarray) -> np.ndarray:
    """Choose intervertebral discs among the peaks of a per-slice disc-likeness signal.

    The signal adds three cues, each relative to its median over the column:
    how dark the body-centre HU is (``profile``, weight ``w``), how empty the
    pedicle zones are (``pedicle``, weight 100 per unit fraction) and how dark
    the lateral rim is (``rim``, weight 0.5, see :func:`_rim_profile`). In
    dense bodies the centre is darkest at the discs, where the pedicle zones
    are empty too, so the centre and pedicle cues correlate. In sparse bodies,
    or with thick slices that blur the endplates into the disc, the centre is
    darker at mid-body than at the disc and the correlation turns negative.
    The centre cue's weight is therefore ``w = clip(3 r, -1, 1)``, with ``r``
    the Pearson correlation of the centre and pedicle profiles.

    Candidate discs are the peaks of the signal (prominence >= 15) and the dips
    of the centre HU (prominence >= 10 HU; the L5-S1 disc between a sparse L5
    and a dense sacrum is a dip with no signal peak), each scored by the
    signal's height there plus the prominence. The chain of candidates with
    consecutive members 24-48 mm apart (one vertebral pitch, Panjabi et al.,
    Spine 1992) and the best total score less a penalty for uneven pitch is
    kept (:func:`_best_chain`). Mid-body candidates lie half a pitch from
    discs, so they cannot join a chain of discs.
    """
    sp = WORK_SPACING_MM
    ok = np.isfinite(profile)
    if ok.sum() < 5:
        return np.array([], int)
    z = np.arange(len(profile))
    p = ndi.gaussian_filter1d(np.interp(z, z[ok], profile[ok]), 0.75)
    q = np.interp(z, z[ok], pedicle[ok])
    okr = ok & np.isfinite(rim)
    g = np.interp(z, z[okr], rim[okr]) if okr.sum() >= 5 else np.zeros_like(p)
    p_med, q_med, g_med = float(np.median(p[ok])), float(np.median(q[ok])), float(np.median(g[ok]))
    # Dense bodies: the centre is bright where the pedicles are (mid-body), so the
    # two cues correlate. Sparse bodies or thick slices: the centre is brighter at
    # the disc than at mid-body, the correlation turns negative, and so does the
    # centre cue's weight.
    r = float(np.corrcoef(p[ok], q[ok])[0, 1]) if np.std(p[ok]) > 0 and np.std(q[ok]) > 0 else 1.0
    w_p = float(np.clip(3.0 * r, -1.0, 1.0))
    signal = ndi.gaussian_filter1d(w_p * (p_med - p) + 100.0 * (q_med - q) + 0.5 * (g_med - g), 0.75)
    # Candidates: peaks of the signal, and dips of the centre HU (a disc between a
    # dense body and the sacrum is a dip even where the signal has no peak).
    peaks: dict[int, float] = {}
    for values, min_prominence in ((signal, 15.0), (-p, 10.0)):
        idx, props = find_peaks(values, prominence=min_prominence)
        for i, pr in zip(idx, props["prominences"]):
            peaks[int(i)] = max(peaks.get(int(i), 0.0), float(pr))
    reach = int(np.ceil(12 / sp))
    cand = [(i, pr) for i, pr in sorted(peaks.items())
            if ok[max(0, i - reach):i + reach + 1].all() and p[i] < 250]
    if not cand:
        return np.array([], int)
    zs = np.array([c[0] for c in cand])
    score = np.maximum(np.array([50.0 + signal[i] + pr for i, pr in cand]), 1.0)
    return np.asarray(sorted(zs[_best_chain(zs * sp, score)]), int)


def _best_chain(z_mm: np.ndarray, score: np.ndarray) -> list[int]:
    """Indices (into ``z_mm``, sorted ascending in z, mm) of the best chain of disc candidates.

    A chain's value is the sum of its candidates' scores less a penalty for
    uneven spacing: consecutive pitches must lie in 24-48 mm, and each change of
    pitch from one vertebra to the next costs ``PITCH_CHANGE_COST`` times the
    squared relative change in percent. Vertebral height changes by a few per
    cent per level from T10 to L5 (Panjabi et al., Spine 1991/1992), so a false
    split of one vertebra into two short pitches (or a missed disc) costs far
    more than one candidate's score. Dynamic programming over candidate pairs.
    """
    n = len(z_mm)
    if n == 0:
        return []
    # best[b, a]: value of the best chain whose last two members are b < a.
    best = np.full((n, n), -np.inf)
    prev = np.full((n, n), -1)
    for a in range(n):
        for b in range(a):
            pitch = z_mm[a] - z_mm[b]
            if not PITCH_MIN_MM <= pitch <= PITCH_MAX_MM:
                continue
            best[b, a] = score[b] + score[a]
            for c in range(b):
                if not np.isfinite(best[c, b]):
                    continue
                change = 100.0 * (pitch - (z_mm[b] - z_mm[c])) / (z_mm[b] - z_mm[c])
                value = best[c, b] + score[a] - PITCH_CHANGE_COST * change ** 2
                if value > best[b, a]:
                    best[b, a], prev[b, a] = value, c
    if not np.isfinite(best).any() or best.max() < score.max():
        return [int(np.argmax(score))]
    b, a = np.unravel_index(int(np.argmax(best)), best.shape)
    chain = [int(a), int(b)]
    while prev[b, a] >= 0:
        b, a = int(prev[b, a]), int(b)
        chain.append(b)
    return sorted(chain)


def _fill_body_holes(bone: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """Fill the holes of one axial bone mask except those behind the body (the spinal canal).

    A low-density (osteoporotic) body is a cortical ring around marrow below
    the bone threshold and must be filled; the canal, enclosed by the arch at
    pedicle level, must not, or it would join the body. Holes whose centroid lies
    more than 10 mm posterior of the body centre are left open.
    """
    filled = ndi.binary_fill_holes(bone)
    holes, n = ndi.label(filled & ~bone)
    if n == 0:
        return filled
    cy = ndi.center_of_mass(np.ones_like(holes), holes, range(1, n + 1))
    for i, (_x, y) in enumerate(cy, start=1):
        if np.isfinite(centre[1]) and (y - centre[1]) * WORK_SPACING_MM > 10.0:
            filled[holes == i] = False
    return filled


def _anterior_limits(hu: np.ndarray, centres: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Working-grid y index of the anterior cortex of the vertebral body, per slice (NaN where unknown).

    Along the mid-line (5 voxels wide) in front of the body centre, the anterior
    cortex is the brightest point 6-30 mm anterior of the centre when it
    exceeds 200 HU; disc slices and misses are filled from their neighbours
    along z (median of 9 slices). Vertebra voxels more than 2 mm in front of
    this line are dropped, which keeps out an enhanced aorta, vena cava or
    bowel that touches the body (contrast phases).
    """
    sp = WORK_SPACING_MM
    ys = np.full(hu.shape[2], np.nan)
    for k in np.nonzero(valid)[0]:
        xc, yc = np.round(centres[k]).astype(int)
        y0, y1 = max(0, yc - int(30 / sp)), max(0, yc - int(6 / sp))
        if y1 - y0 < 3 or xc - 2 < 0:
            continue
        line = hu[xc - 2:xc + 3, y0:y1, k].mean(axis=0)
        j = int(np.argmax(line))
        if line[j] > 200.0:
            ys[k] = y0 + j
    z = np.arange(len(ys))
    ok = np.isfinite(ys)
    if ok.sum() < 3:
        return ys
    return np.interp(z, z[ok], ndi.median_filter(ys[ok], 9, mode="nearest"))


def _plane_sides(planes: list[tuple[np.ndarray, np.ndarray]], box: tuple[slice, ...]) -> np.ndarray:
    """Count, per voxel of ``box``, how many disc planes lie below it (0 = below the lowest disc)."""
    grids = np.meshgrid(*[np.arange(s.start, s.stop) for s in box], indexing="ij")
    pts = np.stack(grids, axis=-1).astype(np.float32)
    count = np.zeros(pts.shape[:3], np.int16)
    for centre, normal in planes:
        count += ((pts - centre) @ normal > 0).astype(np.int16)
    return count


def _rib_bearing(bone: np.ndarray, spine: np.ndarray, centres: np.ndarray, z_lo: int, z_hi: int,
                 z_top: int) -> bool:
    """True when a rib articulates with the vertebra spanning working slices [z_lo, z_hi].

    A rib is a bone piece outside ``spine`` (the column cut at 30 mm from the
    body centre) whose medial end lies within 40 mm of the centre line,
    behind or beside the body, between the lower disc ``z_lo`` and ``z_top``
    (the upper disc less 6 mm: the rib of the vertebra above descends past
    that disc as it runs laterally), and which reaches at least 60 mm lateral.
    """
    sp = WORK_SPACING_MM
    nz = bone.shape[2]
    a = max(0, z_lo - int(40 / sp))
    b = min(nz, z_hi + 1)
    slab = bone[:, :, a:b] & ~spine[:, :, a:b]
    labels = cc3d.connected_components(slab, connectivity=26)
    if labels.max() == 0:
        return False
    xs, ys, zs = np.nonzero(labels)
    lab = labels[xs, ys, zs]
    zabs = zs + a
    cx = centres[np.clip(zabs, 0, nz - 1), 0]
    cy = centres[np.clip(zabs, 0, nz - 1), 1]
    lateral = np.abs(xs - cx) * sp
    for comp in np.unique(lab):
        sel = lab == comp
        if sel.sum() * sp ** 3 < 100:
            continue
        lat = lateral[sel]
        if lat.max() < RIB_LATERAL_MIN_MM:
            continue
        j = int(np.argmin(lat))
        if lat[j] > RIB_MEDIAL_MAX_MM or not (z_lo <= zabs[sel][j] <= z_top):
            continue
        if ys[sel][j] < cy[sel][j] - 10 / sp:  # medial end must be beside/behind the body, not in front
            continue
        return True
    return False


def segment_builtin(ct: CTVolume) -> SpineSegmentation:
    """Find, split and label the vertebrae of a CT with the built-in method.

    Parameters
    ----------
    ct : CTVolume
        HU volume in the canonical LPS frame.

    Returns
    -------
    SpineSegmentation
        Whole-vertebra labels (VerSe numbering) on ``ct``'s grid for the levels
        T11-L5 that are in view; ``body`` is None (the ROI stage derives it).

    Raises
    ------
    NoSpineError
        No spinal column found, no disc found, or neither anchor (sacrum,
        lowest rib-bearing vertebra) in view, so no level can be named.
    """
    sp = WORK_SPACING_MM
    work = _to_working_grid(ct)
    hu = work.hu
    nx, ny, nz = hu.shape
    body = hu > BODY_HU
    body = largest_component(ndi.binary_opening(body, iterations=2))
    if body.sum() == 0:
        raise NoSpineError("no spine in view: no body outline found", ct.info.path)

    pts, ok = _spine_axis(hu, body)
    if ok.sum() * sp < 30:
        raise NoSpineError("no spine in view: no bony column found behind the body centre", ct.info.path)
    axis = _fill_line(pts, 9, 3.0)
    raw_centres = _body_centres(hu, axis)
    centres = _fill_line(raw_centres, 7, 2.0)
    if centres is None:
        raise NoSpineError("no spine in view: no vertebral body found in front of the spinal axis", ct.info.path)
    has_centre = np.isfinite(raw_centres[:, 0])
    # Slices where a body is seen, bridged across disc gaps of up to 16 mm.
    column = ndi.binary_closing(has_centre, structure=np.ones(int(16 / sp) + 1))
    column[has_centre] = True
    profile = _disc_profile(hu, centres, column)
    discs = _find_discs(profile, _pedicle_profile(hu, centres, column), _rim_profile(hu, centres, column))
    if len(discs) == 0:
        raise NoSpineError("levels cannot be identified: no intervertebral disc found", ct.info.path)

    # Disc planes perpendicular to the body-centre line (in voxel units of the isotropic grid).
    tangent = np.gradient(np.column_stack([centres, np.arange(nz)]), axis=0)
    planes = []
    for d in discs:
        n = tangent[d] / np.linalg.norm(tangent[d])
        planes.append((np.array([centres[d, 0], centres[d, 1], d], np.float32), n.astype(np.float32)))

    # Vertebra voxels: bone around the centre line, connected to the bodies.
    bone = hu > VERTEBRA_HU
    box = np.zeros_like(bone)
    for k in np.nonzero(column)[0]:
        xc, yc = centres[k]
        box[max(0, int(xc - 45 / sp)):int(xc + 45 / sp), max(0, int(yc - 30 / sp)):int(yc + 85 / sp), k] = True
    spine = ndi.binary_closing(bone & box, iterations=2) & box
    front = _anterior_limits(hu, centres, column)
    for k in np.nonzero(column)[0]:
        spine[:, :, k] = _fill_body_holes(spine[:, :, k], centres[k])
        if np.isfinite(front[k]):
            spine[:, :max(0, int(np.floor(front[k] - 2 / sp))), k] = False
    seeds = np.zeros_like(spine)
    for k in np.nonzero(has_centre)[0]:
        xc, yc = np.round(centres[k]).astype(int)
        seeds[xc - 2:xc + 3, yc - 2:yc + 3, k] = True
    comp = cc3d.connected_components(spine, connectivity=6)
    keep = np.unique(comp[seeds & spine])
    keep = keep[keep > 0]
    spine = np.isin(comp, keep)
    if not spine.any():
        raise NoSpineError("no spine in view: no vertebral bone connected to the body-centre line", ct.info.path)

    zz = np.nonzero(spine.any(axis=(0, 1)))[0]
    bbox = (slice(0, nx), slice(0, ny), slice(int(zz[0]), int(zz[-1]) + 1))
    sides = np.zeros(hu.shape, np.int16)
    sides[bbox] = _plane_sides(planes, bbox)
    segment_id = np.where(spine, sides + 1, 0).astype(np.int16)  # 1 = below the lowest disc

    n_seg = len(discs) + 1
    seg_z = []
    for s in range(1, n_seg + 1):
        zs = np.nonzero((segment_id == s).any(axis=(0, 1)))[0]
        seg_z.append((int(zs[0]), int(zs[-1])) if len(zs) else None)

    warnings: list[str] = []
    anchors: dict[str, str] = {}
    # --- sacrum anchor: the segment below the lowest disc.
    sacrum = False
    lowest = seg_z[0]
    if lowest is not None:
        length = (discs[0] - lowest[0]) * sp
        sel = segment_id == 1
        lo = max(lowest[0], discs[0] - int(30 / sp))
        xs = np.nonzero(sel[:, :, lo:discs[0]].any(axis=(1, 2)))[0]
        bone_slab = (hu[:, :, lo:discs[0]] > VERTEBRA_HU) & body[:, :, lo:discs[0]]
        comp_slab = cc3d.connected_components(bone_slab, connectivity=26)
        ids = np.unique(comp_slab[sel[:, :, lo:discs[0]] & bone_slab])
        ids = ids[ids > 0]
        width = 0.0
        if len(ids):
            xw = np.nonzero(np.isin(comp_slab, ids).any(axis=(1, 2)))[0]
            width = (xw[-1] - xw[0] + 1) * sp
        elif len(xs):
            width = (xs[-1] - xs[0] + 1) * sp
        if length >= SACRUM_MIN_LENGTH_MM and width >= SACRUM_MIN_WIDTH_MM and lowest[0] > 0:
            sacrum = True
            anchors["sacrum"] = f"sacrum below the disc at z = {ct.index_to_lps(np.zeros(3))[2] + discs[0] * sp:.0f} mm"
    # --- rib anchor: lowest rib-bearing segment directly above a complete rib-free one.
    bone150 = (hu > AXIS_BONE_HU) & body
    # The column itself, cut at 30 mm either side of the body centre: ribs and
    # transverse processes that merge with it (thick slices, blur) keep their
    # lateral parts, which start near the costotransverse joints of their own level.
    spine_core = ndi.binary_dilation(spine, iterations=1)
    xi = np.arange(nx)[:, None]
    for k in np.nonzero(column)[0]:
        spine_core[:, :, k] &= np.abs(xi - centres[k, 0]) * sp <= SPINE_CORE_HALF_WIDTH_MM
    ribs = [False] * n_seg
    for s in range(1, n_seg):  # segment index s (0-based) is bounded below by disc s-1
        if seg_z[s] is not None:
            top = discs[s] - int(6 / sp) if s < len(discs) else seg_z[s][1]
            ribs[s] = _rib_bearing(bone150, spine_core, centres, discs[s - 1], seg_z[s][1], top)
    rib_anchor = None
    for s in range(2, n_seg):  # the segment below (s-1 >= 1) must be a complete vertebra
        if ribs[s] and not ribs[s - 1] and seg_z[s - 1] is not None:
            rib_anchor = s
            break

    names: dict[int, str] = {}
    if sacrum:
        names = {s: _LUMBAR_UP[i] for i, s in enumerate(range(1, n_seg)) if i < len(_LUMBAR_UP)}
        if rib_anchor is not None and names.get(rib_anchor) != "T12":
            warnings.append(
                f"transitional anatomy: the lowest rib-bearing vertebra counts as {names.get(rib_anchor, '?')} "
                "from the sacrum (expected T12); labels follow the sacrum")
            anchors["lowest_rib"] = f"{names.get(rib_anchor, '?')} (disagrees with the sacrum)"
        elif rib_anchor is not None:
            anchors["lowest_rib"] = "T12 (agrees with the sacrum)"
    elif rib_anchor is not None:
        below = ("L1", "L2", "L3", "L4", "L5")
        above = ("T12", "T11", "T10", "T9")
        names = {s: below[rib_anchor - 1 - s] for s in range(max(1, rib_anchor - 5), rib_anchor)}
        names.update({s: above[s - rib_anchor] for s in range(rib_anchor, min(n_seg, rib_anchor + 4))})
        anchors["lowest_rib"] = "T12 = lowest rib-bearing vertebra (no sacrum in view)"
        warnings.append("no sacrum in view: levels counted from the lowest rib-bearing vertebra (T12); "
                        "a missing 12th rib or a lumbar rib would shift them")
    else:
        raise NoSpineError("levels cannot be identified: neither the sacrum nor the lowest rib-bearing "
                           "vertebra (T12) with a rib-free vertebra below it is in view", ct.info.path)

    labels_w = np.zeros(hu.shape, np.uint8)
    level_flags: dict[str, list[str]] = {}
    for s, name in names.items():
        if name not in REPORTED_LEVELS or seg_z[s] is None:
            continue
        mask = segment_id == s + 1
        labels_w[mask] = VERSE_LABELS[name]
        flags = []
        z0, z1 = seg_z[s]
        top_open = s == n_seg - 1
        if top_open or z0 == 0 or z1 >= nz - 1:
            flags.append("partial")
        level_flags[name] = flags

    labels = _labels_to_ct_grid(labels_w, work.grid, ct)
    present = tuple(n for n in REPORTED_LEVELS if VERSE_LABELS[n] in np.unique(labels))
    if not present:
        raise NoSpineError("levels cannot be identified: no level between T11 and L5 in view", ct.info.path)
    return SpineSegmentation(labels=labels, body=None, levels=present, backend="builtin",
                             level_flags={k: v for k, v in level_flags.items() if k in present},
                             anchors=anchors, warnings=tuple(warnings))


def _labels_to_ct_grid(labels_w: np.ndarray, work_grid: Grid, ct: CTVolume) -> np.ndarray:
    image = array_to_image(labels_w, work_grid)
    ref = grid_reference_image(ct.grid, sitk.sitkUInt8)
    return image_to_array(sitk.Resample(image, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8))
