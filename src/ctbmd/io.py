"""Read and validate CT input; write outputs atomically.

Input formats: NIfTI (``.nii``, ``.nii.gz``), NRRD (``.nrrd``, ``.nhdr``), MetaImage
(``.mha``, ``.mhd``) through SimpleITK, and DICOM folders (series chosen with
pydicom headers, pixels decoded by SimpleITK/GDCM, which reads JPEG 2000 and
JPEG-LS as is).

Every volume is returned as a :class:`ctbmd.types.CTVolume` in the canonical frame
(array ``(nx, ny, nz)``, axes toward patient L, P, S; affine to DICOM LPS mm).
See :mod:`ctbmd.types` for the conventions.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import gzip
import logging
import os
import shutil
import tempfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.errors import InvalidDicomError

from ctbmd.errors import InvalidInputError, UsageError
from ctbmd.types import CTVolume, Grid, ScanInfo

log = logging.getLogger(__name__)

#: Fewest slices and smallest cranio-caudal extent (mm) that can hold one
#: vertebral body: lumbar bodies are ~25-30 mm tall, thoracic ~20-25 mm
#: (Panjabi et al., Spine 1991/1992). Below this no level can be measured.
MIN_SLICES = 5
MIN_Z_EXTENT_MM = 30.0
#: HU assigned to padding / outside-FOV values (air). DICOM padding is often
#: -2000 or -3024 after rescale.
AIR_HU = -1024.0
#: A slice step larger than this multiple of the median step is a gap (missing slices).
GAP_FACTOR = 1.5
#: Tolerated in-plane shear of slice positions, degrees; more is gantry tilt.
MAX_TILT_DEG = 0.5

_SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"
_VOLUME_SUFFIXES = {".nii": "nifti", ".nii.gz": "nifti", ".nrrd": "nrrd", ".nhdr": "nrrd",
                    ".mha": "mha", ".mhd": "mha"}


def volume_format(path: str | Path) -> str | None:
    """The volume format of a file name: ``nifti``, ``nrrd`` or ``mha`` (:data:`_VOLUME_SUFFIXES`), or None."""
    name = Path(path).name.lower()
    for suffix, fmt in sorted(_VOLUME_SUFFIXES.items(), key=lambda kv: -len(kv[0])):
        if name.endswith(suffix):
            return fmt
    return None


def _grid_of(image: sitk.Image) -> Grid:
    return Grid(
        size=tuple(int(s) for s in image.GetSize()),
        spacing_mm=tuple(float(s) for s in image.GetSpacing()),
        origin_lps_mm=tuple(float(o) for o in image.GetOrigin()),
        direction=tuple(float(d) for d in image.GetDirection()),
    )


def grid_reference_image(grid: Grid, pixel_id: int = sitk.sitkUInt8) -> sitk.Image:
    """Return an empty SimpleITK image with ``grid``'s geometry (for resampling onto it)."""
    ref = sitk.Image([int(s) for s in grid.size], pixel_id)
    ref.SetSpacing(grid.spacing_mm)
    ref.SetOrigin(grid.origin_lps_mm)
    ref.SetDirection(grid.direction)
    return ref


def array_to_image(array: np.ndarray, grid: Grid) -> sitk.Image:
    """Wrap a canonical ``(nx, ny, nz)`` array as a SimpleITK image with ``grid``'s geometry."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(array, (2, 1, 0))))
    image.SetSpacing(grid.spacing_mm)
    image.SetOrigin(grid.origin_lps_mm)
    image.SetDirection(grid.direction)
    return image


def image_to_array(image: sitk.Image) -> np.ndarray:
    """Return a SimpleITK image's voxels as an ``(nx, ny, nz)`` array (index order i, j, k)."""
    return np.transpose(sitk.GetArrayFromImage(image), (2, 1, 0))


def image_to_array_view(image: sitk.Image) -> np.ndarray:
    """Read-only ``(nx, ny, nz)`` view of a SimpleITK image's voxels, without a copy.

    Valid only while ``image`` lives: copy it (e.g. ``.astype``) before the image goes.
    """
    return np.transpose(sitk.GetArrayViewFromImage(image), (2, 1, 0))


def to_canonical(image: sitk.Image) -> sitk.Image:
    """Reorient (permute/flip, no interpolation) so the index axes point toward L, P, S."""
    return sitk.DICOMOrient(image, "LPS")


def _check_complete(path: Path) -> None:
    """Raise InvalidInputError for a truncated gzip stream or a NIfTI shorter than its header says.

    SimpleITK zero-fills some truncated files instead of failing, so this is checked first.
    A ``.nii.gz`` whose gzip trailer gives the uncompressed size its NIfTI header needs
    (:func:`_gzip_size_matches`, a few milliseconds) is complete; any other ``.gz`` is
    decompressed once to the end, which also checks its CRC. Corruption inside a
    complete stream is left to SimpleITK's own decoder.
    """
    name = path.name.lower()
    if name.endswith(".nii.gz") and _gzip_size_matches(path):
        return
    if name.endswith(".gz"):
        try:
            with gzip.open(path, "rb") as fh:
                while fh.read(1 << 24):
                    pass
        except (EOFError, OSError, zlib.error) as exc:
            raise InvalidInputError(f"truncated or corrupt gzip data ({exc})", path) from None
    if name.endswith(".nii"):
        try:
            need = _nifti_bytes_needed(path)
        except Exception as exc:  # noqa: BLE001 - any header failure is a corrupt file
            raise InvalidInputError(f"corrupt NIfTI header ({exc})", path) from None
        if path.stat().st_size < need:
            raise InvalidInputError(f"truncated NIfTI: {path.stat().st_size} bytes, header needs {need}", path)


def _nifti_bytes_needed(path: Path) -> int:
    """Bytes a NIfTI file (uncompressed) must hold by its header: ``vox_offset + nvoxels * itemsize``."""
    img = nib.load(path)
    return int(img.dataobj.offset) + int(np.prod(img.shape)) * img.get_data_dtype().itemsize


def _gzip_size_matches(path: Path) -> bool:
    """True when a ``.nii.gz`` file's gzip trailer holds the size its NIfTI header needs.

    The last 4 bytes of a gzip stream give its uncompressed size modulo 2**32
    (ISIZE, RFC 1952 section 2.3.1); a truncated stream ends in compressed data
    instead, which matches by chance with probability 2**-32. The header needs
    ``vox_offset + nvoxels * itemsize`` bytes. Any doubt (an unreadable header, a
    multi-member file, trailing bytes) returns False, and the caller decompresses
    the whole stream.
    """
    try:
        need = _nifti_bytes_needed(path)
        with open(path, "rb") as fh:
            fh.seek(-4, os.SEEK_END)
            isize = int.from_bytes(fh.read(4), "little")
    except Exception:  # noqa: BLE001 - any failure means: check the slow way
        return False
    return isize == need % (1 << 32)


def _check_nifti(path: Path) -> None:
    """Refuse a NIfTI whose two orientations disagree, or a float NIfTI holding NaN or infinite voxels.

    A NIfTI header carries two voxel-to-world transforms, the qform and the
    sform. When both are set (code > 0) and point the axes different ways
    (other axis codes, e.g. RAS against LAS), readers disagree on which to use
    (ITK and nibabel take the sform, others the qform): the patient's left or
    feet depend on the program. ITK's NIfTI reader turns NaN into 0 without a
    word (0 HU, soft tissue), so the file is read with nibabel first. Integer
    NIfTI (most CT) cannot hold NaN and its voxels are not read twice.

    Raises
    ------
    InvalidInputError
        The qform and sform disagree; or NaN or infinite voxels.
    """
    try:
        image = nib.load(str(path))
        header = image.header
        qform, qcode = header.get_qform(coded=True)
        sform, scode = header.get_sform(coded=True)
        q_axes = nib.aff2axcodes(qform) if qform is not None and int(qcode) > 0 else None
        s_axes = nib.aff2axcodes(sform) if sform is not None and int(scode) > 0 else None
    except Exception:  # noqa: BLE001 - ITK reports unreadable files with its own message
        return
    if q_axes is not None and s_axes is not None and q_axes != s_axes:
        raise InvalidInputError(
            f"the NIfTI header's qform ({''.join(str(a) for a in q_axes)}) and sform "
            f"({''.join(str(a) for a in s_axes)}) orient the axes differently: programs disagree on which is "
            "the patient's left, front or head; rewrite the file with one orientation", path)
    if image.get_data_dtype().kind != "f":
        return
    data = np.asanyarray(image.dataobj)
    bad = int(np.count_nonzero(~np.isfinite(data)))
    if bad:
        raise InvalidInputError(f"{bad} of {data.size} voxels are NaN or infinite: a CT in HU has only finite "
                                "values (a float volume with missing data?)", path)


def _read_volume_file(path: Path) -> sitk.Image:
    _check_complete(path)  # before ITK allocates what a corrupt header declares
    if volume_format(path) == "nifti":
        _check_nifti(path)
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as exc:
        detail = str(exc).strip().splitlines()
        hint = next((line.strip() for line in detail if "rror" in line and "itk::" not in line), "")
        raise InvalidInputError(
            f"cannot read image: the file is corrupt, truncated or not a {volume_format(path)} volume"
            + (f" ({hint[:120]})" if hint else ""), path) from None


# --------------------------------------------------------------------------- DICOM


@dataclass(frozen=True)
class DicomSeries:
    """One candidate series in a DICOM folder.

    Attributes
    ----------
    key : str
        SeriesInstanceUID, or a derived key when the UID is empty.
    files : tuple of str
        Slice files, unsorted.
    headers : tuple of pydicom.Dataset
        Their headers (no pixel data), in the same order.
    modality : str
        Modality (0008,0060).
    image_type : tuple of str
        ImageType (0008,0008) of the first slice.
    axial : bool
        True when the slice normal is within 30 degrees of the patient z axis.
    description : str
        SeriesDescription.
    study_uid : str
        StudyInstanceUID of the first slice ("" when missing).
    """

    key: str
    files: tuple[str, ...]
    headers: tuple
    modality: str
    image_type: tuple[str, ...]
    axial: bool
    description: str
    study_uid: str = ""

    @property
    def original_primary(self) -> bool:
        """True for ImageType ORIGINAL\\PRIMARY."""
        return len(self.image_type) >= 2 and self.image_type[0] == "ORIGINAL" and self.image_type[1] == "PRIMARY"


def _iter_files(folder: Path):
    for root, _dirs, files in os.walk(folder):
        for name in sorted(files):
            yield Path(root) / name


#: The attributes :func:`scan_dicom_folder` reads when it does not keep the headers.
_INDEX_TAGS = ("SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID", "SeriesNumber", "SeriesDescription",
               "Modality", "ImageType", "Rows", "Columns", "ImageOrientationPatient", "ImagePositionPatient")


def scan_dicom_folder(folder: str | Path, files: Sequence[str | Path] | None = None,
                      keep_headers: bool = True) -> list[DicomSeries]:
    """Group the DICOM image files in ``folder`` (recursively) into series.

    Files that are not DICOM are skipped. Series are keyed by SeriesInstanceUID;
    slices with an empty UID are grouped by orientation and matrix size.
    Localisers and secondary captures are left out.

    Parameters
    ----------
    folder : str or Path
        Searched recursively; named in errors.
    files : sequence of str or Path, optional
        Read these files instead of searching ``folder`` (a batch that has
        already indexed a large folder passes one series' files).
    keep_headers : bool
        False reads only the attributes that group and choose series
        (:data:`_INDEX_TAGS`) and leaves ``DicomSeries.headers`` empty: an index
        of a large tree that does not hold every header in memory.

    Returns
    -------
    list of DicomSeries
        Every image series found, in no particular order.

    Raises
    ------
    InvalidInputError
        If the folder holds no readable DICOM image.
    """
    folder = Path(folder)
    groups: dict[str, list] = {}
    meta: dict[str, tuple] = {}
    tags = None if keep_headers else list(_INDEX_TAGS)
    unreadable: list[tuple[str, str, object]] = []
    for f in (map(Path, files) if files is not None else _iter_files(folder)):
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=tags)
        except (InvalidDicomError, OSError, ValueError, EOFError, AttributeError, TypeError):
            continue
        if "Rows" not in ds or "ImageOrientationPatient" not in ds or "ImagePositionPatient" not in ds:
            continue
        image_type = tuple(str(v).upper() for v in ds.get("ImageType", []))
        sop_class = str(ds.get("SOPClassUID", ""))
        if "LOCALIZER" in image_type or sop_class.startswith(_SECONDARY_CAPTURE_PREFIX):
            continue
        iop = _numbers(ds, "ImageOrientationPatient", 6)
        uid = str(ds.get("SeriesInstanceUID", "") or "")
        # without a UID, slices of one series share a study, a folder, a series number, orientation and size
        base = "no-uid/" + "/".join([str(ds.get("StudyInstanceUID", "")), os.path.dirname(str(f)),
                                     str(ds.get("SeriesNumber", "")), f"{ds.Rows}x{ds.get('Columns', '')}"])
        if iop is None:  # kept: read_dicom_series names the file and the attribute if its series is chosen
            if not uid:
                unreadable.append((base, str(f), ds if keep_headers else None))
                continue
            iop = np.full(6, np.nan)
        normal = np.cross(iop[:3], iop[3:])
        key = uid or f"{base}/{np.round(iop, 3).tolist()}"
        groups.setdefault(key, []).append((str(f), ds if keep_headers else None))
        if key not in meta:
            meta[key] = (str(ds.get("Modality", "")), image_type, bool(abs(normal[2]) > np.cos(np.radians(30))),
                         str(ds.get("SeriesDescription", "")), str(ds.get("StudyInstanceUID", "") or ""))
    for base, f, ds in unreadable:  # a slice without a usable orientation joins the one series it matches
        matches = [k for k in groups if k.startswith(base + "/")]
        if len(matches) == 1:
            groups[matches[0]].append((f, ds))
    if not groups:
        raise InvalidInputError("no DICOM image files found in folder", folder)
    return [DicomSeries(k, tuple(f for f, _ in v), tuple(d for _, d in v) if keep_headers else (), *meta[k])
            for k, v in groups.items()]


def choose_series(series: list[DicomSeries], folder: str | Path, series_uid: str | None = None) -> DicomSeries:
    """Pick the series to analyse.

    Preference: ``series_uid`` when given; else among CT series, axial before
    non-axial, ORIGINAL/PRIMARY before derived, then the most slices.

    Raises
    ------
    InvalidInputError
        If ``series_uid`` is not in the folder, or no series has Modality CT.
    """
    if series_uid is not None:
        for s in series:
            if s.key == series_uid:
                return s
        raise InvalidInputError(f"series {series_uid} not found; available: "
                                + ", ".join(s.key for s in series), folder)
    ct = [s for s in series if s.modality == "CT"]
    if not ct:
        found = sorted({s.modality or "unknown" for s in series})
        raise InvalidInputError(f"not a CT: no series with Modality CT (found {', '.join(found)})", folder)
    best = max(ct, key=lambda s: (s.axial, s.original_primary, len(s.files)))
    return best


def _sorted_slices(series: DicomSeries) -> tuple[list[str], list]:
    """Files and headers of ``series`` sorted along the slice normal (inferior to superior for axial)."""
    iop = np.asarray([float(v) for v in series.headers[0].ImageOrientationPatient])
    normal = np.cross(iop[:3], iop[3:])
    pos = np.asarray([[float(v) for v in h.ImagePositionPatient] for h in series.headers])
    order = np.argsort(pos @ normal)
    return [series.files[i] for i in order], [series.headers[i] for i in order]


#: Plausible ranges of the header values :func:`check_dicom_header` checks: pixel spacing (mm), rescale slope
#: (HU per stored value; CT uses 1, sometimes 0.5-2), rescale intercept (HU); and the tube voltages (kV) the
#: effective-energy table of :mod:`ctbmd.calibrate.energy` covers, outside which a header's KVP is not used and
#: ``--kvp`` is refused.
PIXEL_SPACING_RANGE_MM = (0.05, 10.0)
RESCALE_SLOPE_RANGE = (1e-3, 100.0)
RESCALE_INTERCEPT_RANGE = (-10000.0, 10000.0)
KVP_RANGE = (70.0, 150.0)


def _numbers(ds, name: str, count: int) -> np.ndarray | None:
    """The ``count`` values of attribute ``name`` as finite floats, or None (missing, empty, not numeric,
    another count, NaN or inf)."""
    raw = ds.get(name)
    if raw is None or raw == "":
        return None
    try:
        values = [float(v) for v in (raw if isinstance(raw, (list, tuple, pydicom.multival.MultiValue)) else [raw])]
    except (TypeError, ValueError):
        return None
    arr = np.asarray(values, float)
    return arr if arr.shape == (count,) and np.all(np.isfinite(arr)) else None


def _raw_text(ds, name: str) -> str:
    """The attribute's value as written in the file, for an error message (``missing`` when absent)."""
    if name not in ds:
        return "missing"
    value = ds.get_item(name).value  # the raw element: the bytes as written, even where pydicom cannot parse them
    if value is None or value == "" or value == b"":
        return "empty"
    if isinstance(value, bytes):
        value = value.decode("latin-1", "replace").strip()
    if isinstance(value, pydicom.multival.MultiValue):
        value = "\\".join(map(str, value))
    return f"'{value}'"


def check_dicom_header(ds, path: str | Path) -> None:
    """Check the geometry and rescale attributes of one CT slice before they are used.

    Checked (DICOM PS3.3 C.7.6.2 Image Plane, C.7.6.3 Image Pixel, C.8.2.1 CT
    Image): ImageOrientationPatient (6 finite numbers, two unit vectors at right
    angles, within 0.05), ImagePositionPatient (3 finite numbers), PixelSpacing
    (2 finite numbers in :data:`PIXEL_SPACING_RANGE_MM`), Rows and Columns
    (present, positive), PhotometricInterpretation (MONOCHROME1 or MONOCHROME2)
    and, when present, RescaleSlope and RescaleIntercept (finite, in
    :data:`RESCALE_SLOPE_RANGE` and :data:`RESCALE_INTERCEPT_RANGE`). A missing or
    impossible value is never replaced by a default.

    Parameters
    ----------
    ds : pydicom.Dataset
        The slice's header.
    path : str or Path
        The slice file, named in the error.

    Raises
    ------
    InvalidInputError
        Naming the file, the attribute and the value found.
    """
    def bad(name: str, why: str):
        raise InvalidInputError(f"{name} {_raw_text(ds, name)} {why}", path)

    iop = _numbers(ds, "ImageOrientationPatient", 6)
    if iop is None:
        bad("ImageOrientationPatient", "is not 6 finite numbers")
    row, col = iop[:3], iop[3:]
    if abs(np.linalg.norm(row) - 1) > 0.05 or abs(np.linalg.norm(col) - 1) > 0.05 or abs(row @ col) > 0.05:
        bad("ImageOrientationPatient", "is not two unit vectors at right angles")
    if _numbers(ds, "ImagePositionPatient", 3) is None:
        bad("ImagePositionPatient", "is not 3 finite numbers")
    spacing = _numbers(ds, "PixelSpacing", 2)
    lo, hi = PIXEL_SPACING_RANGE_MM
    if spacing is None or np.any(spacing < lo) or np.any(spacing > hi):
        bad("PixelSpacing", f"is not 2 pixel sizes of {lo:g}-{hi:g} mm (no default is assumed)")
    for name in ("Rows", "Columns"):
        try:
            ok = int(ds.get(name) or 0) > 0
        except (TypeError, ValueError):
            ok = False
        if not ok:
            bad(name, "is not a positive number of pixels")
    if str(ds.get("PhotometricInterpretation", "")).strip().upper() not in ("MONOCHROME1", "MONOCHROME2"):
        bad("PhotometricInterpretation", "is not MONOCHROME1 or MONOCHROME2 (a CT image is greyscale)")
    for name, (lo, hi) in (("RescaleSlope", RESCALE_SLOPE_RANGE), ("RescaleIntercept", RESCALE_INTERCEPT_RANGE)):
        if name in ds:
            value = _numbers(ds, name, 1)
            if value is None or not lo <= value[0] <= hi:
                bad(name, f"is not a number of {lo:g} to {hi:g}")


def header_kvp(ds, path: str | Path) -> tuple[float | None, str | None]:
    """The tube voltage of a header, or None with the reason when it is missing or impossible.

    A KVP outside :data:`KVP_RANGE` (NaN, 1e9, text) is not used: the
    calibration then treats the kVp as unknown, as for a NIfTI, and the note
    says so (``--kvp`` gives the right value).

    Returns
    -------
    kvp : float or None
        kV.
    note : str or None
        Why a KVP that is present was not used.
    """
    if ds.get("KVP") in (None, ""):
        return None, None
    value = _numbers(ds, "KVP", 1)
    lo, hi = KVP_RANGE
    if value is None or not lo <= value[0] <= hi:
        return None, f"KVP {_raw_text(ds, 'KVP')} in {Path(path).name} is not a tube voltage of {lo:g}-{hi:g} kV; not used"
    return float(value[0]), None


def check_slice_geometry(positions: np.ndarray, iop: np.ndarray, source: str | Path) -> list[str]:
    """Check sorted slice positions for duplicates, gaps and gantry tilt.

    Parameters
    ----------
    positions : numpy.ndarray
        ImagePositionPatient of each slice, shape ``(n, 3)``, LPS mm, sorted along
        the slice normal.
    iop : numpy.ndarray
        ImageOrientationPatient, shape ``(6,)``.
    source : str or Path
        Named in errors.

    Returns
    -------
    list of str
        Warnings (small spacing jitter).

    Raises
    ------
    InvalidInputError
        On duplicate positions, a gap (a step > 1.5x the median step), or gantry
        tilt (slice offsets not along the slice normal by more than 0.5 degrees).
    """
    warnings = []
    normal = np.cross(iop[:3], iop[3:])
    steps = np.diff(positions @ normal)
    if np.any(steps < 1e-3):
        i = int(np.argmin(steps))
        raise InvalidInputError(f"duplicate slice position at {positions[i] @ normal:.2f} mm along the slice normal", source)
    median = float(np.median(steps))
    if np.any(steps > GAP_FACTOR * median):
        i = int(np.argmax(steps))
        raise InvalidInputError(
            f"gap in the slices: step of {steps[i]:.2f} mm after slice {i + 1} where the series steps "
            f"{median:.2f} mm (missing slices?)", source)
    if np.ptp(steps) > 0.05 * median:
        warnings.append(f"slice spacing jitter {np.ptp(steps):.2f} mm around a {median:.2f} mm step")
    offsets = positions - positions[0]
    along = offsets @ normal
    shear = np.linalg.norm(offsets - np.outer(along, normal), axis=1)
    if len(positions) > 1 and along[-1] > 0:
        tilt = float(np.degrees(np.arctan2(shear[-1], along[-1])))
        if tilt > MAX_TILT_DEG:
            raise InvalidInputError(
                f"gantry tilt of {tilt:.1f} degrees (slice positions are sheared); resample the series "
                "to an orthogonal grid first", source)
    return warnings


def read_dicom_series(folder: str | Path, series_uid: str | None = None,
                      files: Sequence[str | Path] | None = None) -> tuple[sitk.Image, ScanInfo]:
    """Read one CT series from a DICOM folder (or from ``files``, see :func:`scan_dicom_folder`).

    Returns
    -------
    image : SimpleITK.Image
        The series in HU (RescaleSlope/Intercept applied), as stored (not reoriented), in the
        reader's pixel type (int16 for most CT; :func:`read_ct` makes it float32).
    info : ScanInfo

    Raises
    ------
    InvalidInputError
        No CT series, an unknown ``series_uid``, geometry problems (see
        :func:`check_slice_geometry`) or undecodable pixel data.
    """
    folder = Path(folder)
    series = scan_dicom_folder(folder, files)
    chosen = choose_series(series, folder, series_uid)
    notes = []
    if len(series) > 1:
        notes.append(f"{len(series)} series in folder; chose {chosen.key} ({chosen.description or 'no description'}, "
                     f"{len(chosen.files)} slices, {'/'.join(chosen.image_type[:2]) or 'no ImageType'})")
        log.info(notes[-1])
    if chosen.modality != "CT":
        raise InvalidInputError(f"not a CT: series Modality is {chosen.modality or 'missing'}", folder)
    for f, h in zip(chosen.files, chosen.headers):
        check_dicom_header(h, f)
    files, headers = _sorted_slices(chosen)
    first = headers[0]
    iop = np.asarray([float(v) for v in first.ImageOrientationPatient])
    positions = np.asarray([[float(v) for v in h.ImagePositionPatient] for h in headers])
    if len(files) >= 2:
        notes += check_slice_geometry(positions, iop, folder)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise InvalidInputError(f"cannot decode DICOM pixel data ({str(exc).strip().splitlines()[-1][:120]})",
                                folder) from None
    padding = first.get("PixelPaddingValue")
    if padding is not None:
        slope = float(first.get("RescaleSlope", 1.0))
        intercept = float(first.get("RescaleIntercept", 0.0))
        pad_hu = slope * float(padding) + intercept
        arr = sitk.GetArrayViewFromImage(image)
        if np.any(arr == pad_hu):
            image = sitk.Mask(image, sitk.Cast(image != pad_hu, sitk.sitkUInt8), outsideValue=AIR_HU)

    def attr(name):
        v = first.get(name)
        if v is None or v == "":
            return None
        if isinstance(v, pydicom.multival.MultiValue):
            return "\\".join(str(x) for x in v)
        return v

    kvp, kvp_note = header_kvp(first, files[0])
    if kvp_note:
        notes.append(kvp_note)
    info = ScanInfo(
        path=str(folder), format="dicom", input_grid=_grid_of(image),
        series_uid=str(first.get("SeriesInstanceUID", "") or chosen.key),
        kvp=kvp,
        contrast_agent=str(attr("ContrastBolusAgent")) if attr("ContrastBolusAgent") is not None else None,
        convolution_kernel=str(attr("ConvolutionKernel")) if attr("ConvolutionKernel") is not None else None,
        manufacturer=str(attr("Manufacturer")) if attr("Manufacturer") is not None else None,
        patient_id=str(attr("PatientID")) if attr("PatientID") is not None else None,
        slice_thickness_mm=float(attr("SliceThickness")) if attr("SliceThickness") is not None else None,
        notes=tuple(notes), source_files=tuple(files),
    )
    return image, info


# --------------------------------------------------------------------------- validation


def validate_ct(hu: np.ndarray, grid: Grid, source: str | Path) -> list[str]:
    """Check that a canonical HU array is a usable CT volume.

    Parameters
    ----------
    hu : numpy.ndarray
        ``(nx, ny, nz)`` HU in the canonical frame.
    grid : Grid
        Its geometry (spacing in mm).
    source : str or Path
        Named in errors.

    Returns
    -------
    list of str
        Warnings (thick slices).

    Raises
    ------
    InvalidInputError
        Not 3-D; fewer than :data:`MIN_SLICES` slices or less than
        :data:`MIN_Z_EXTENT_MM` of cranio-caudal coverage; a NaN or infinite
        voxel; a constant image; no voxel below -500 HU (no air, so not CT in HU).
    """
    warnings = []
    if hu.ndim != 3:
        raise InvalidInputError(f"expected a 3-D volume, got {hu.ndim} dimensions", source)
    nz = hu.shape[2]
    extent = nz * grid.spacing_mm[2]
    if nz < MIN_SLICES or extent < MIN_Z_EXTENT_MM:
        raise InvalidInputError(
            f"too few slices: {nz} slices cover {extent:.1f} mm, a vertebra needs at least "
            f"{MIN_SLICES} slices and {MIN_Z_EXTENT_MM:.0f} mm", source)
    lo, hi = float(hu.min()), float(hu.max())
    if not (np.isfinite(lo) and np.isfinite(hi)):  # min and max carry any NaN; inf is itself the extreme
        bad = int(np.count_nonzero(~np.isfinite(hu)))
        raise InvalidInputError(f"{bad} of {hu.size} voxels are NaN or infinite: a CT in HU has only finite "
                                "values (a float volume with missing data?)", source)
    if hi - lo < 1.0:
        raise InvalidInputError(f"constant image (every voxel is {lo:g}): no CT data", source)
    if lo > -500:
        raise InvalidInputError(
            f"not a CT in Hounsfield units: no voxel below -500 HU (range {lo:g} to {hi:g}); "
            "raw stored values without RescaleSlope/Intercept?", source)
    if grid.spacing_mm[2] > 3.0:
        warnings.append(f"slice spacing {grid.spacing_mm[2]:.1f} mm > 3 mm: partial-volume and noise raise HU spread")
    return warnings


def read_ct(path: str | Path, series_uid: str | None = None,
            files: Sequence[str | Path] | None = None) -> tuple[CTVolume, list[str]]:
    """Read a CT from a NIfTI/NRRD/MHA file or a DICOM folder, validated and canonical.

    Parameters
    ----------
    path : str or Path
        Volume file, or folder holding a DICOM series.
    series_uid : str, optional
        SeriesInstanceUID to read when a DICOM folder holds several series.
    files : sequence of str or Path, optional
        For a DICOM folder: read the series from these files instead of
        searching the folder (:func:`scan_dicom_folder`).

    Returns
    -------
    ct : CTVolume
        float32 HU, shape ``(nx, ny, nz)``, canonical L/P/S axes; values below
        -1024 HU (padding) set to -1024.
    warnings : list of str
        Non-fatal remarks; the same as ``ct.info.notes``.

    Raises
    ------
    InvalidInputError
        Missing path, unknown format, unreadable or corrupt file, not CT,
        too few slices, slice gaps, gantry tilt, constant image.
    """
    path = Path(path)
    if not path.exists():
        raise InvalidInputError("no such file or folder", path)
    if path.is_dir():
        image, info = read_dicom_series(path, series_uid, files)
    else:
        fmt = volume_format(path)
        if fmt is None:
            try:
                pydicom.dcmread(path, stop_before_pixels=True)
            except (InvalidDicomError, OSError, ValueError):
                raise InvalidInputError(
                    "unknown format: expected .nii, .nii.gz, .nrrd, .mha or a DICOM folder", path) from None
            return read_ct(path.parent, series_uid)
        image = _read_volume_file(path)
        if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
            raise InvalidInputError(f"expected a scalar 3-D volume, got {image.GetDimension()}-D with "
                                    f"{image.GetNumberOfComponentsPerPixel()} component(s)", path)
        info = ScanInfo(path=str(path), format=fmt, input_grid=_grid_of(image))
    # reoriented in the stored type (int16 for most files: half the bytes of float32), then
    # converted to float32 and clipped at the padding floor in the one pass that leaves SimpleITK
    canonical = to_canonical(image)
    hu = np.maximum(image_to_array_view(canonical), np.float32(AIR_HU), dtype=np.float32)
    grid = _grid_of(canonical)
    warnings = validate_ct(hu, grid, path)
    info = replace(info, notes=tuple(info.notes) + tuple(warnings))  # the read's remarks travel with the scan
    return CTVolume(hu=hu, grid=grid, info=info), list(info.notes)


def read_label_map(path: str | Path, ct: CTVolume) -> np.ndarray:
    """Read a label map and resample it (nearest neighbour) onto ``ct``'s canonical grid.

    The map may be stored in any orientation (e.g. LAS or RAS NIfTI); geometry is
    taken from its header, so it must cover the same patient space as the CT.

    Returns
    -------
    numpy.ndarray
        uint8 or uint16 labels, shape ``ct.hu.shape``.

    Raises
    ------
    InvalidInputError
        Missing or unreadable file, non-integer labels, or no overlap with the CT.
    """
    path = Path(path)
    if not path.exists():
        raise InvalidInputError("no such label file", path)
    image = _read_volume_file(path)
    if image.GetDimension() != 3:
        raise InvalidInputError(f"expected a 3-D label map, got {image.GetDimension()}-D", path)
    image = sitk.Cast(image, sitk.sitkUInt16)
    ref = grid_reference_image(ct.grid, sitk.sitkUInt16)
    resampled = sitk.Resample(image, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt16)
    labels = image_to_array(resampled)
    if not labels.any():
        raise InvalidInputError("label map does not overlap the CT (check that both are the same scan)", path)
    return labels


def labels_on_input_grid(labels: np.ndarray, ct: CTVolume) -> sitk.Image:
    """Put a canonical label array back onto the input's stored grid (nearest neighbour).

    The canonical grid is a permutation/flip of the input grid
    (:func:`to_canonical`), so this is exact: the array axes are permuted and
    flipped back in numpy (no interpolation, one copy) and the input's geometry
    is copied exactly. The permutation is read off the two direction matrices
    and checked against the sizes, spacings and origin; a grid that is not such
    a permutation is resampled (SimpleITK nearest neighbour).

    Parameters
    ----------
    labels : numpy.ndarray
        Integer labels, shape ``ct.hu.shape`` (canonical L, P, S axes).
    ct : CTVolume
        The scan, whose ``info.input_grid`` is the stored grid.

    Returns
    -------
    SimpleITK.Image
        Same pixel type as ``labels``, on the stored grid.
    """
    src = ct.info.input_grid
    canon = np.array(ct.grid.direction).reshape(3, 3)
    m = canon.T @ np.array(src.direction).reshape(3, 3)  # column i: stored axis i in canonical axes
    perm = np.argmax(np.abs(m), axis=0)
    sign = np.sign(m[perm, np.arange(3)])
    corner = [0 if sg > 0 else labels.shape[a] - 1 for a, sg in zip(perm, sign)]  # stored voxel 0, canonical index
    first = np.zeros(3)
    first[perm] = corner
    if (sorted(perm) == [0, 1, 2] and np.allclose(np.abs(m[perm, np.arange(3)]), 1.0, atol=1e-6)
            and all(labels.shape[a] == n for a, n in zip(perm, src.size))
            and np.allclose([ct.grid.spacing_mm[a] for a in perm], src.spacing_mm, rtol=1e-6)
            and np.allclose(ct.index_to_lps(first), src.origin_lps_mm, atol=1e-3)):
        stored = labels.transpose(perm)[tuple(slice(None, None, -1) if sg < 0 else slice(None) for sg in sign)]
        out = sitk.GetImageFromArray(np.ascontiguousarray(stored.transpose(2, 1, 0)))
        out.SetSpacing(src.spacing_mm)
        out.SetOrigin(src.origin_lps_mm)
        out.SetDirection(src.direction)
        return out
    image = array_to_image(labels, ct.grid)
    ref = grid_reference_image(src, image.GetPixelID())
    return sitk.Resample(image, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0, image.GetPixelID())


# --------------------------------------------------------------------------- atomic output


#: The process's umask, read once at import (reading it means setting it, which is not safe once threads run).
_UMASK = os.umask(0o022)
os.umask(_UMASK)


#: Infixes of the hidden siblings of an output folder ``OUT``: ``.OUT.ctbmd-staging-XXXX`` (the new
#: folder being written), ``.OUT.ctbmd-old-XXXX`` (the earlier result, while it is swapped out) and
#: ``.OUT.ctbmd-lock`` (held while a run writes into ``OUT``).
STAGING_INFIX, OLD_INFIX, LOCK_INFIX = ".ctbmd-staging-", ".ctbmd-old-", ".ctbmd-lock"


def check_output_dir(path: str | Path, result_files: Sequence[str] = ()) -> Path:
    """Check, before any analysis, that ``path`` can become an output folder.

    It may exist as a writable folder that is empty or holds only an earlier
    result (files named in ``result_files``, which a run replaces whole), or
    not exist under a writable folder (it is then created later). Checked with
    ``os.access``, so it also holds for a read-only mount.

    Parameters
    ----------
    path : str or Path
        The output folder.
    result_files : sequence of str
        Names of the files a run writes; with none given, the content of an
        existing folder is not checked.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    UsageError
        ``path`` is a file, lies under a file, or it or its nearest existing
        parent cannot be written; or it holds files that are not an earlier
        result, which replacing it would delete (exit 2), with the reason.
    """
    path = Path(path)
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise UsageError("is a file, not a folder" if probe == path else f"lies under {probe}, which is a file",
                         path)
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError("cannot be written (no permission)" if probe == path
                         else f"cannot be created: {probe} cannot be written (no permission)", path)
    if probe == path and result_files:
        if not os.access(path.parent, os.W_OK | os.X_OK):
            raise UsageError(f"cannot be replaced: its parent {path.parent} cannot be written (no permission)", path)
        foreign = sorted(f.name for f in path.iterdir() if f.name not in result_files)
        if foreign:
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise UsageError(f"holds files that are not a ctbmd result ({shown}); a run replaces its output "
                             "folder whole, so give a new or empty folder", path)
    return path


@contextlib.contextmanager
def output_lock(path: str | Path):
    """Hold an exclusive lock on output folder ``path`` while a run writes it.

    The lock is ``fcntl.flock`` on the hidden sibling ``.<name>.ctbmd-lock``,
    released when the block ends or the process dies (also by SIGKILL). The
    lock file itself stays (removing it would race with a waiting run).

    Raises
    ------
    UsageError
        Another run holds the lock (exit 2).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.parent / f".{path.name}{LOCK_INFIX}"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError("another ctbmd run is writing into this folder; wait for it or give another "
                             "--out", path) from None
        yield path
    finally:
        os.close(fd)  # closing releases the lock


def staging_dir(path: str | Path) -> Path:
    """Make the hidden staging folder for output folder ``path``, beside it (same file system).

    Its mode follows the umask (0755 under umask 022), since it becomes ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}{STAGING_INFIX}", dir=path.parent))
    os.chmod(staging, 0o777 & ~_UMASK)
    return staging


def clean_stale(path: str | Path) -> list[str]:
    """Remove what an interrupted run left beside output folder ``path``; call it holding :func:`output_lock`.

    Staging folders (``.<name>.ctbmd-staging-*``) are deleted. A swapped-out
    earlier result (``.<name>.ctbmd-old-*``) is deleted when ``path`` exists,
    and put back as ``path`` when it does not (a run killed between the two
    renames of :func:`replace_dir`'s fallback).

    Returns
    -------
    list of str
        One line per thing removed or restored.
    """
    path = Path(path)
    done = []
    if not path.parent.is_dir():
        return done
    for leftover in sorted(path.parent.glob(f".{path.name}{OLD_INFIX}*")):
        if not path.exists():
            os.rename(leftover, path)
            done.append(f"restored the earlier result {path} from {leftover.name} (an interrupted run)")
        else:
            shutil.rmtree(leftover, ignore_errors=True)
            done.append(f"removed {leftover.name} (an interrupted run)")
    for leftover in sorted(path.parent.glob(f".{path.name}{STAGING_INFIX}*")):
        shutil.rmtree(leftover, ignore_errors=True)
        done.append(f"removed {leftover.name} (an interrupted run)")
    return done


_RENAME_EXCHANGE = 2  # linux/fs.h


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one ``renameat2(RENAME_EXCHANGE)`` call (Linux 3.15+); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def replace_dir(staging: str | Path, path: str | Path) -> None:
    """Put the complete folder ``staging`` in place of ``path``, whole, so ``path`` never mixes two runs.

    A missing ``path`` is created by one rename. An existing one is swapped
    with ``staging`` by one ``renameat2(RENAME_EXCHANGE)`` and the earlier
    content, now in ``staging``'s place, is deleted: a process killed at any
    point leaves either the earlier folder or the new one at ``path``. Where
    the exchange is not supported (not Linux, some network file systems) the
    earlier folder is first renamed to ``.<name>.ctbmd-old-*``; a kill between
    the two renames leaves ``path`` missing and the earlier result whole there,
    which :func:`clean_stale` puts back on the next run.

    Raises
    ------
    OSError
        A rename fails (the earlier folder is then left in place).
    """
    staging, path = Path(staging), Path(path)
    if not path.exists():
        os.rename(staging, path)
        return
    if _exchange(staging, path):
        shutil.rmtree(staging, ignore_errors=True)
        return
    old = path.parent / f".{path.name}{OLD_INFIX}{os.getpid()}"
    os.rename(path, old)
    os.rename(staging, path)
    shutil.rmtree(old, ignore_errors=True)


def write_atomic(path: str | Path, writer: Callable[[Path], None]) -> Path:
    """Write a file via a temporary sibling and ``os.replace`` so no half-written file remains.

    The file's mode follows the process's umask (0644 under umask 022), as a
    plain ``open`` would give it.

    Parameters
    ----------
    path : str or Path
        Final destination.
    writer : callable
        Called with the temporary path (same folder and suffix); must create it.

    Returns
    -------
    Path
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes) or ".tmp"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name.split('.')[0]}-", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        writer(tmp_path)
        os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; the file gets what the umask allows
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()
    return path


def write_image_atomic(image: sitk.Image, path: str | Path) -> Path:
    """Write a SimpleITK image (compressed when the format allows) atomically."""
    return write_atomic(path, lambda p: sitk.WriteImage(image, str(p), useCompression=True))
