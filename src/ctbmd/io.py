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
import glob
import gzip
import logging
import os
import shutil
import sys
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


# ITK's own warnings (e.g. "unexpected scales in sform") would go to stderr; ctbmd checks those headers itself
sitk.ProcessObject.SetGlobalWarningDisplay(False)


@contextlib.contextmanager
def quiet_libraries(native: bool = True):
    """Keep what the readers print (niftilib's C messages, ITK, nibabel's logger, pydicom's warnings) off
    stderr, and put it in ctbmd's log at debug level (shown by ``--debug``).

    The C libraries write to file descriptor 2 itself, so with ``native`` (in
    the main thread only) it is pointed at a temporary file for the duration: a
    spinner drawn by another thread in that time is moved to the log with it,
    so keep such blocks to the C calls. In other threads (a batch worker's
    task) file descriptors are left alone, since the whole process shares them.

    Parameters
    ----------
    native : bool
        Also capture file descriptor 2 (C libraries), not only Python warnings
        and nibabel's logger.

    Yields
    ------
    None
    """
    import threading
    import warnings

    from nibabel.imageglobals import LoggingOutputSuppressor

    saved = None
    with tempfile.TemporaryFile() as sink, warnings.catch_warnings(record=True) as caught, \
            LoggingOutputSuppressor():
        warnings.simplefilter("always")
        if native and threading.current_thread() is threading.main_thread():
            try:
                if sys.stderr is not None:
                    sys.stderr.flush()
                saved = os.dup(2)
            except (OSError, ValueError):
                saved = None
            if saved is not None:
                try:
                    os.dup2(sink.fileno(), 2)
                except OSError:
                    os.close(saved)
                    saved = None
        try:
            yield
        finally:
            if saved is not None:
                os.dup2(saved, 2)
                os.close(saved)
            sink.seek(0)
            text = sink.read().decode("utf-8", "replace").strip()
            if text:
                log.debug("reader messages: %s", " | ".join(text.splitlines())[:4000])
            for w in caught:
                log.debug("reader warning: %s: %s", w.category.__name__, w.message)


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
    size = path.stat().st_size
    if name.endswith(".gz"):
        size = 0
        try:
            with gzip.open(path, "rb") as fh:
                while chunk := fh.read(1 << 24):
                    size += len(chunk)
        except (EOFError, OSError, zlib.error) as exc:
            raise InvalidInputError(f"truncated or corrupt gzip data ({exc})", path) from None
    if name.endswith((".nii", ".nii.gz")):
        try:
            need = _nifti_bytes_needed(path)
        except Exception as exc:  # noqa: BLE001 - any header failure is a corrupt file
            raise InvalidInputError(f"corrupt NIfTI header ({exc})", path) from None
        if size < need:
            raise InvalidInputError(f"truncated NIfTI: {size} bytes, its header (dim, datatype, vox_offset) needs "
                                    f"{need}", path)


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


def _raw_vox_offset(path: Path, endianness: str) -> float | None:
    """The vox_offset field (bytes 108-111) as written in a NIfTI-1 file, or None when unreadable."""
    import struct

    try:
        opener = gzip.open if path.name.lower().endswith(".gz") else open
        with opener(path, "rb") as fh:
            head = fh.read(112)
        return struct.unpack(endianness + "f", head[108:112])[0]
    except (OSError, EOFError, struct.error, zlib.error):
        return None


def _check_nifti(path: Path) -> None:
    """Refuse a NIfTI whose two orientations disagree, or a float NIfTI holding NaN or infinite voxels.

    A NIfTI header carries two voxel-to-world transforms, the qform and the
    sform. When both are set (code > 0) and point the axes different ways
    (other axis codes, e.g. RAS against LAS), readers disagree on which to use
    (ITK and nibabel take the sform, others the qform): the patient's left or
    feet depend on the program. ITK's NIfTI reader turns NaN into 0 without a
    word (0 HU, soft tissue), so the file is read with nibabel first. Integer
    NIfTI (most CT) cannot hold NaN and its voxels are not read twice.

    Also checked: vox_offset as written (at least 352 in a single-file
    NIfTI-1; nibabel shows it as 0 once loaded), pixdim (3 positive finite
    voxel sizes), the sform's voxel
    sizes against pixdim (within 1%: ITK falls back to the qform when they
    differ, other programs do not), and scl_slope/scl_inter (a slope of 0 or
    NaN means no scaling, NIfTI-1; any other slope must be a CT rescale).

    Raises
    ------
    InvalidInputError
        The qform and sform disagree; a broken pixdim, sform or rescale; or NaN
        or infinite voxels.
    """
    try:
        with quiet_libraries():
            image = nib.load(str(path))
        header = image.header
        pixdim = np.asarray(header["pixdim"][1:4], float)
    except Exception:  # noqa: BLE001 - ITK reports unreadable files with its own message
        return
    offset = _raw_vox_offset(path, header.endianness)
    if bytes(header["magic"]).startswith(b"n+1") and offset is not None and not offset >= 352:
        raise InvalidInputError(f"the NIfTI header's vox_offset {offset:g} lies inside the header: a single-file "
                                "NIfTI-1's voxels start at byte 352 or later (readers differ on where)", path)
    if not np.all(np.isfinite(pixdim)) or np.any(pixdim <= 0):
        raise InvalidInputError(f"the NIfTI header's pixdim {np.round(pixdim, 4).tolist()} is not 3 positive voxel "
                                "sizes", path)
    try:
        qform, qcode = header.get_qform(coded=True)
        sform, scode = header.get_sform(coded=True)
        q_axes = nib.aff2axcodes(qform) if qform is not None and int(qcode) > 0 else None
        s_axes = nib.aff2axcodes(sform) if sform is not None and int(scode) > 0 else None
    except Exception:  # noqa: BLE001 - a transform nibabel cannot use (NaN, singular)
        raise InvalidInputError("the NIfTI header's qform or sform is not a usable transform (NaN, infinite or "
                                "singular)", path) from None
    if s_axes is not None:
        columns = np.linalg.norm(np.asarray(sform)[:3, :3], axis=0)
        if not np.all(np.isfinite(columns)) or not np.allclose(columns, pixdim, rtol=0.01):
            raise InvalidInputError(
                f"the NIfTI header's sform gives voxels of {np.round(columns, 4).tolist()} mm and its pixdim "
                f"{np.round(pixdim, 4).tolist()} mm: programs disagree on the voxel size; rewrite the file", path)
    slope, inter = float(header["scl_slope"]), float(header["scl_inter"])
    if slope != 0 and np.isfinite(slope) and not (RESCALE_SLOPE_RANGE[0] <= slope <= RESCALE_SLOPE_RANGE[1]
                                                  and np.isfinite(inter) and RESCALE_INTERCEPT_RANGE[0] <= inter
                                                  <= RESCALE_INTERCEPT_RANGE[1]):
        raise InvalidInputError(f"the NIfTI header's scl_slope {slope:g} and scl_inter {inter:g} are not a CT "
                                f"rescale (slope {RESCALE_SLOPE_RANGE[0]:g}-{RESCALE_SLOPE_RANGE[1]:g}, intercept "
                                f"{RESCALE_INTERCEPT_RANGE[0]:g} to {RESCALE_INTERCEPT_RANGE[1]:g})", path)
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
        with quiet_libraries():
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
    slice_thickness_mm : float or None
        SliceThickness of the first slice.
    series_number : int or None
        SeriesNumber of the first slice.
    """

    key: str
    files: tuple[str, ...]
    headers: tuple
    modality: str
    image_type: tuple[str, ...]
    axial: bool
    description: str
    study_uid: str = ""
    slice_thickness_mm: float | None = None
    series_number: int | None = None

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
               "Modality", "ImageType", "Rows", "Columns", "ImageOrientationPatient", "ImagePositionPatient",
               "PixelSpacing", "SliceThickness")


def _float_or_none(ds, name: str) -> float | None:
    values = _numbers(ds, name, 1)
    return None if values is None else float(values[0])


def _reconstruction(ds, iop: np.ndarray) -> tuple:
    """What tells two reconstructions in one series apart: orientation (to 0.01), matrix, pixel spacing and
    slice thickness (to 0.01 mm). A scout stored without the LOCALIZER type differs in orientation or matrix."""
    spacing = _numbers(ds, "PixelSpacing", 2)
    thickness = _float_or_none(ds, "SliceThickness")
    return (tuple(np.round(iop, 2).tolist()) if np.all(np.isfinite(iop)) else None,
            *(n if n is not None and 0 < n <= MAX_MATRIX else None
              for n in (_int_or_none(ds, "Rows"), _int_or_none(ds, "Columns"))),
            None if spacing is None else tuple(np.round(spacing, 3).tolist()),
            None if thickness is None else round(thickness, 2))


def _describe(recon: tuple, count: int) -> str:
    iop, rows, cols, spacing, thickness = recon
    if iop is None:
        plane = "unknown orientation"
    else:
        normal = np.abs(np.cross(iop[:3], iop[3:]))
        plane = ("axial", "coronal", "sagittal")[[2, 1, 0].index(int(np.argmax(normal)))]
    px = f"{spacing[0]:g} mm pixels" if spacing else "no pixel size"
    th = f"{thickness:g} mm slices" if thickness is not None else "no slice thickness"
    return f"{count} {plane} images {rows}x{cols}, {px}, {th}"


def _split_reconstructions(groups: dict[str, list], notes: list[str]) -> dict[str, list]:
    """Split a SeriesInstanceUID that holds more than one reconstruction, or a scout, into ``UID#1``,
    ``UID#2`` ... (most images first), adding one line per split UID to ``notes``.

    A part is split off when its orientation or matrix differs from the largest part's (a scout or another
    plane), or when it has at least :data:`MIN_SLICES` images of another pixel spacing or slice thickness (a
    second reconstruction). Fewer such images, and slices whose orientation cannot be read, stay with the
    largest part, where :func:`read_dicom_series` names the file and the attribute.
    """
    out: dict[str, list] = {}
    for key, members in groups.items():
        parts: dict[tuple, list] = {}
        for item in members:
            parts.setdefault(item[2], []).append(item)
        # a part whose orientation or matrix cannot be read is a broken slice, not a reconstruction
        known = sorted((p for p in parts if None not in p[:3]), key=lambda p: (-len(parts[p]), str(p)))
        if key.startswith("no-uid/") or len(known) <= 1:
            out[key] = members
            continue
        main, separate = known[0], [known[0]]
        for p in known[1:]:
            if p[:3] != main[:3] or len(parts[p]) >= MIN_SLICES:
                separate.append(p)
        if len(separate) == 1:
            out[key] = members
            continue
        kept = {p: list(parts[p]) for p in separate}
        for p, items in parts.items():
            if p not in kept:
                kept[main] += items
        for i, p in enumerate(separate, 1):
            out[f"{key}#{i}"] = kept[p]
        notes.append(f"series {key} holds {len(separate)} reconstructions or a scout, read as separate series: "
                     + "; ".join(f"{key}#{i}: {_describe(p, len(kept[p]))}" for i, p in enumerate(separate, 1)))
    return out


def _read_header(path: Path, tags: list[str] | None):
    """The header of a DICOM file (no pixel data), or None when it is not a readable DICOM file."""
    try:
        return pydicom.dcmread(path, stop_before_pixels=True, specific_tags=tags)
    except (InvalidDicomError, OSError, ValueError, EOFError, AttributeError, TypeError):
        return None


def scan_dicom_folder(folder: str | Path, files: Sequence[str | Path] | None = None,
                      keep_headers: bool = True, notes: list[str] | None = None) -> list[DicomSeries]:
    """Group the DICOM image files in ``folder`` (recursively) into series.

    Files that are not DICOM are skipped. Series are keyed by SeriesInstanceUID;
    slices with an empty UID are grouped by orientation and matrix size.
    Localisers and secondary captures are left out. A UID holding images of
    more than one geometry (orientation, matrix, pixel spacing or slice
    thickness: two reconstructions, or a scout without the LOCALIZER type) is
    split into series keyed ``UID#1``, ``UID#2`` ..., most images first, and a
    line in ``notes`` says so.

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
    notes : list of str, optional
        Receives one line per split series.

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
    tags = None if keep_headers else list(_INDEX_TAGS)
    unreadable: list[tuple[str, str, object]] = []
    with quiet_libraries(native=False):
        headers = [(f, _read_header(f, tags)) for f in (map(Path, files) if files is not None else _iter_files(folder))]
    for f, ds in headers:
        if ds is None:
            continue
        if "Rows" not in ds or "ImageOrientationPatient" not in ds or "ImagePositionPatient" not in ds:
            continue
        image_type = tuple(v.upper() for v in _text(ds, "ImageType").split("\\") if v)
        sop_class = _text(ds, "SOPClassUID")
        if "LOCALIZER" in image_type or sop_class.startswith(_SECONDARY_CAPTURE_PREFIX):
            continue
        iop = _numbers(ds, "ImageOrientationPatient", 6)
        uid = _text(ds, "SeriesInstanceUID")
        # without a UID, slices of one series share a study, a folder, a series number, orientation and size
        base = "no-uid/" + "/".join([_text(ds, "StudyInstanceUID"), os.path.dirname(str(f)),
                                     _text(ds, "SeriesNumber"), f"{_text(ds, 'Rows')}x{_text(ds, 'Columns')}"])
        if iop is None:  # kept: read_dicom_series names the file and the attribute if its series is chosen
            if not uid:
                unreadable.append((base, str(f), ds if keep_headers else None))
                continue
            iop = np.full(6, np.nan)
        key = uid or f"{base}/{np.round(iop, 3).tolist()}"
        groups.setdefault(key, []).append((str(f), ds if keep_headers else None, _reconstruction(ds, iop),
                                           _series_meta(ds, image_type, iop)))
    for base, f, ds in unreadable:  # a slice without a usable orientation joins the one series it matches
        matches = [k for k in groups if k.startswith(base + "/")]
        if len(matches) == 1:
            groups[matches[0]].append((f, ds, groups[matches[0]][0][2], groups[matches[0]][0][3]))
    if not groups:
        raise InvalidInputError("no DICOM image files found in folder", folder)
    if notes is None:
        notes = []
    groups = _split_reconstructions(groups, notes)
    for line in notes:
        log.info(line)
    return [DicomSeries(k, tuple(m[0] for m in v), tuple(m[1] for m in v) if keep_headers else (),
                        *next((m[3] for m in v if None not in m[2][:3]), v[0][3]))
            for k, v in groups.items()]


def _series_meta(ds, image_type: tuple[str, ...], iop: np.ndarray) -> tuple:
    """The per-series fields of :class:`DicomSeries` after ``headers``, read from one slice."""
    normal = np.cross(iop[:3], iop[3:])
    return (_text(ds, "Modality"), image_type, bool(abs(normal[2]) > np.cos(np.radians(30))),
            _text(ds, "SeriesDescription"), _text(ds, "StudyInstanceUID"), _float_or_none(ds, "SliceThickness"),
            _int_or_none(ds, "SeriesNumber"))


def _series_rank(s: DicomSeries) -> tuple:
    """Sort key of :func:`choose_series`, best last."""
    thickness = s.slice_thickness_mm if s.slice_thickness_mm is not None else np.inf
    number = s.series_number if s.series_number is not None else np.inf
    return (s.axial, s.original_primary, len(s.files), -thickness, -number)


def choose_series(series: list[DicomSeries], folder: str | Path, series_uid: str | None = None,
                  notes: list[str] | None = None) -> DicomSeries:
    """Pick the series to analyse.

    Preference: ``series_uid`` when given (a key of :func:`scan_dicom_folder`,
    e.g. ``UID`` or ``UID#2`` for a split series; the plain UID of a split
    series picks among its parts by the rule below); else among CT series, axial
    before non-axial, ORIGINAL/PRIMARY before derived, then the most slices.
    Ties are broken by the thinner slices, then the lower SeriesNumber, then
    the smaller key, and the tie is said in ``notes`` with the other keys, so
    the user can pick another one.

    Parameters
    ----------
    series : list of DicomSeries
        The candidates (:func:`scan_dicom_folder`).
    folder : str or Path
        Named in errors.
    series_uid : str, optional
        The series asked for.
    notes : list of str, optional
        Receives the tie line.

    Returns
    -------
    DicomSeries

    Raises
    ------
    InvalidInputError
        If ``series_uid`` is not in the folder, or no series has Modality CT.
    """
    if series_uid is not None:
        for s in series:
            if s.key == series_uid:
                return s
        if "#" in series_uid:  # UID#k of a split series, read from that part's own files (a batch)
            base = [s for s in series if s.key == series_uid.split("#")[0]]
            if len(base) == 1:
                return base[0]
        parts = [s for s in series if s.key.split("#")[0] == series_uid]
        if parts:  # the plain UID of a split series (a PACS or a manifest names it so): its best part
            return choose_series(parts, folder, None, notes)
        raise InvalidInputError(f"series {series_uid} not found; available: "
                                + ", ".join(s.key for s in series), folder)
    ct = [s for s in series if s.modality == "CT"]
    if not ct:
        found = sorted({s.modality or "unknown" for s in series})
        raise InvalidInputError(f"not a CT: no series with Modality CT (found {', '.join(found)})", folder)
    ranked = sorted(ct, key=lambda s: (_series_rank(s), [-ord(c) for c in s.key]))
    best = ranked[-1]
    tied = [s for s in ranked[:-1] if _series_rank(s)[:3] == _series_rank(best)[:3]]
    if tied and notes is not None:
        rank, other = _series_rank(best), _series_rank(tied[-1])
        rule = ("the thinner slices" if rank[3] != other[3] else "the lower SeriesNumber" if rank[4] != other[4]
                else "the smaller series UID")
        notes.append(f"{len(tied) + 1} CT series are alike (plane, ImageType, {len(best.files)} slices): chose "
                     f"{best.key} by {rule}; to read another give its series UID (--series-uid): "
                     + ", ".join(s.key for s in reversed(tied)))
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
#: Slice thicknesses (mm) taken from a header; outside, SliceThickness is not used (CT: 0.5-10 mm).
SLICE_THICKNESS_RANGE_MM = (0.1, 20.0)
#: Voxel sizes (mm) a volume may have along every axis; outside, the file's geometry is refused.
VOXEL_SIZE_RANGE_MM = (0.05, 20.0)
KVP_RANGE = (70.0, 150.0)


def _text(ds, name: str) -> str:
    """Attribute ``name`` as stripped text; ``""`` when missing, empty or not convertible by pydicom."""
    try:
        value = ds.get(name, "")
        if isinstance(value, pydicom.multival.MultiValue):
            return "\\".join(str(v) for v in value)
        return str(value if value is not None else "").strip()
    except Exception:  # noqa: BLE001 - pydicom raises converting a raw value it cannot parse
        return ""


def _numbers(ds, name: str, count: int) -> np.ndarray | None:
    """The ``count`` values of attribute ``name`` as finite floats, or None (missing, empty, not numeric,
    another count, NaN or inf)."""
    try:
        raw = ds.get(name)
    except Exception:  # noqa: BLE001 - pydicom raises converting a raw value it cannot parse (wrong length)
        return None
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
    if isinstance(value, bytes):  # printable on one line: control bytes escaped
        value = value.decode("latin-1").strip().encode("unicode_escape").decode("ascii")
    if isinstance(value, pydicom.multival.MultiValue):
        value = "\\".join(map(str, value))
    return f"'{value}'"


def check_dicom_header(ds, path: str | Path) -> None:
    """Check the geometry and rescale attributes of one CT slice before they are used.

    Checked (DICOM PS3.3 C.7.6.2 Image Plane, C.7.6.3 Image Pixel, C.8.2.1 CT
    Image): ImageOrientationPatient (6 finite numbers, two unit vectors at right
    angles, within 0.05), ImagePositionPatient (3 finite numbers), PixelSpacing
    (2 finite numbers in :data:`PIXEL_SPACING_RANGE_MM`), Rows and Columns
    (1 to :data:`MAX_MATRIX`, and, for an uncompressed transfer syntax, no more
    pixels than the file holds), PhotometricInterpretation (MONOCHROME1 or MONOCHROME2),
    when present RescaleSlope and RescaleIntercept (finite, in
    :data:`RESCALE_SLOPE_RANGE` and :data:`RESCALE_INTERCEPT_RANGE`), the SOP
    class (one of :data:`CT_STORAGE_CLASSES`; the file meta's when the dataset
    has none) and the pixel description (SamplesPerPixel 1, BitsAllocated 8, 16
    or 32, BitsStored at most that, HighBit = BitsStored - 1,
    PixelRepresentation 0 or 1; PS3.3 C.7.6.3). A missing or impossible value
    is never replaced by a default.

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
        if not 0 < (_int_or_none(ds, name) or 0) <= MAX_MATRIX:
            bad(name, f"is not a number of pixels of 1 to {MAX_MATRIX}")
    if _text(ds, "PhotometricInterpretation").upper() not in ("MONOCHROME1", "MONOCHROME2"):
        bad("PhotometricInterpretation", "is not MONOCHROME1 or MONOCHROME2 (a CT image is greyscale)")
    for name, (lo, hi) in (("RescaleSlope", RESCALE_SLOPE_RANGE), ("RescaleIntercept", RESCALE_INTERCEPT_RANGE)):
        if name in ds:
            value = _numbers(ds, name, 1)
            if value is None or not lo <= value[0] <= hi:
                bad(name, f"is not a number of {lo:g} to {hi:g}")
    sop_class = _text(ds, "SOPClassUID") or _text(getattr(ds, "file_meta", {}), "MediaStorageSOPClassUID")
    if sop_class not in CT_STORAGE_CLASSES:
        # GDCM reads the geometry and rescale of the CT classes only: another class gets a 1 mm pixel silently
        bad("SOPClassUID", f"is not CT Image Storage ({CT_STORAGE_CLASSES[0]})")
    pixel = {name: _int_or_none(ds, name) for name in ("SamplesPerPixel", "BitsAllocated", "BitsStored", "HighBit",
                                                        "PixelRepresentation")}
    if pixel["SamplesPerPixel"] != 1:
        bad("SamplesPerPixel", "is not 1 (a CT image has one sample per pixel)")
    if pixel["BitsAllocated"] not in (8, 16, 32):
        bad("BitsAllocated", "is not 8, 16 or 32")
    if pixel["BitsStored"] is None or not 1 <= pixel["BitsStored"] <= pixel["BitsAllocated"]:
        bad("BitsStored", f"is not 1 to BitsAllocated ({pixel['BitsAllocated']})")
    if pixel["HighBit"] != pixel["BitsStored"] - 1:
        bad("HighBit", f"is not BitsStored - 1 ({pixel['BitsStored'] - 1}; DICOM PS3.5 8.1.1)")
    if pixel["PixelRepresentation"] not in (0, 1):
        bad("PixelRepresentation", "is not 0 (unsigned) or 1 (two's complement)")
    if "PixelPaddingValue" in ds and _int_or_none(ds, "PixelPaddingValue") is None:
        bad("PixelPaddingValue", "is not one integer")
    syntax = _text(getattr(ds, "file_meta", {}), "TransferSyntaxUID")
    if syntax in NATIVE_TRANSFER_SYNTAXES:  # uncompressed: the file must hold every pixel
        need = _int_or_none(ds, "Rows") * _int_or_none(ds, "Columns") * pixel["BitsAllocated"] // 8
        if os.path.getsize(path) < need:
            raise InvalidInputError(f"Rows x Columns ({_int_or_none(ds, 'Rows')} x {_int_or_none(ds, 'Columns')}) "
                                    f"need {need} bytes of pixel data, the file holds {os.path.getsize(path)} in all",
                                    path)


#: Transfer syntaxes whose pixel data is stored uncompressed (DICOM PS3.5 A.1-A.3): implicit and explicit VR
#: little endian, explicit VR big endian (deflate compresses the whole dataset, so it is not among them).
NATIVE_TRANSFER_SYNTAXES = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2")
#: Largest Rows or Columns of a CT slice taken (CT matrices are 512 to 2048).
MAX_MATRIX = 8192
#: SOP class of the single-frame CT images ctbmd reads (DICOM PS3.4 B.5, CT Image Storage).
CT_STORAGE_CLASSES = ("1.2.840.10008.5.1.4.1.1.2",)


def _int_or_none(ds, name: str) -> int | None:
    """An integer attribute (US, SS, IS) as an int; None when missing, empty, not one integer or unreadable."""
    try:
        value = ds.get(name)
    except Exception:  # noqa: BLE001 - pydicom raises on a raw value it cannot convert
        return None
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)
    try:
        text = str(value).strip()
        return int(text) if text.lstrip("-").isdigit() else None
    except (TypeError, ValueError):
        return None


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


def _check_reader_geometry(image: sitk.Image, first, positions: np.ndarray, source: str | Path) -> None:
    """The pixel size, first position and slice step that ITK (GDCM) read must be the header's.

    GDCM takes geometry from attributes of its own choosing (for a SOP class it
    does not know, a 1 mm pixel); checked here against the validated header, so
    any disagreement stops the read instead of scaling the scan silently.
    """
    spacing = _numbers(first, "PixelSpacing", 2)  # row spacing (between rows, along y), column spacing
    # ITK's slice spacing is the mean step from the first to the last slice, not the median
    step = float(np.linalg.norm(positions[-1] - positions[0]) / (len(positions) - 1)) if len(positions) > 1 else None
    expected = [spacing[1], spacing[0]] + ([step] if step is not None else [])
    got = list(image.GetSpacing())[:len(expected)]
    origin = np.asarray(image.GetOrigin())
    if not np.allclose(got, expected, rtol=1e-3, atol=1e-3) or not np.allclose(origin, positions[0], atol=0.01):
        raise InvalidInputError(
            f"the DICOM reader read voxels of {' x '.join(f'{v:g}' for v in got)} mm at {np.round(origin, 2).tolist()} "
            f"where the headers say {' x '.join(f'{v:g}' for v in expected)} mm at {np.round(positions[0], 2).tolist()}; "
            "the series' geometry attributes disagree with each other", source)


def _check_alike(series: DicomSeries) -> None:
    """Every slice of ``series`` has the first slice's matrix and pixel spacing (ITK reads the volume with the
    first slice's), else :class:`InvalidInputError` naming the first file that differs and the attribute."""
    first = series.headers[0]
    ref = (int(first.Rows), int(first.Columns), _numbers(first, "PixelSpacing", 2))
    for f, h in zip(series.files[1:], series.headers[1:]):
        for name, a, b in (("Rows", ref[0], int(h.Rows)), ("Columns", ref[1], int(h.Columns))):
            if a != b:
                raise InvalidInputError(f"{name} {b} differs from the series' first slice ({a}): one series must "
                                        "have one matrix", f)
        spacing = _numbers(h, "PixelSpacing", 2)
        if np.any(np.abs(spacing - ref[2]) > 1e-3 * ref[2]):
            raise InvalidInputError(f"PixelSpacing {_raw_text(h, 'PixelSpacing')} differs from the series' first "
                                    f"slice ({ref[2][0]:g}\\{ref[2][1]:g}): one series must have one pixel size", f)


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
    notes: list[str] = []
    series = scan_dicom_folder(folder, files, notes=notes)
    chosen = choose_series(series, folder, series_uid, notes)
    if len(series) > 1:
        notes.append(f"{len(series)} series in folder; chose {chosen.key} ({chosen.description or 'no description'}, "
                     f"{len(chosen.files)} slices, {'/'.join(chosen.image_type[:2]) or 'no ImageType'})")
        log.info(notes[-1])
    if chosen.modality != "CT":
        raise InvalidInputError(f"not a CT: series Modality is {chosen.modality or 'missing'}", folder)
    for f, h in zip(chosen.files, chosen.headers):
        check_dicom_header(h, f)
    _check_alike(chosen)
    files, headers = _sorted_slices(chosen)
    first = headers[0]
    iop = np.asarray([float(v) for v in first.ImageOrientationPatient])
    positions = np.asarray([[float(v) for v in h.ImagePositionPatient] for h in headers])
    if len(files) >= 2:
        notes += check_slice_geometry(positions, iop, folder)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        with quiet_libraries():
            image = reader.Execute()
    except RuntimeError as exc:
        raise InvalidInputError(f"cannot decode DICOM pixel data ({str(exc).strip().splitlines()[-1][:120]})",
                                folder) from None
    padding = _int_or_none(first, "PixelPaddingValue")
    if padding is not None:
        slope = float(first.get("RescaleSlope", 1.0))
        intercept = float(first.get("RescaleIntercept", 0.0))
        pad_hu = slope * float(padding) + intercept
        arr = sitk.GetArrayViewFromImage(image)
        if np.any(arr == pad_hu):
            image = sitk.Mask(image, sitk.Cast(image != pad_hu, sitk.sitkUInt8), outsideValue=AIR_HU)

    def attr(name):
        return _text(first, name) or None

    kvp, kvp_note = header_kvp(first, files[0])
    if kvp_note:
        notes.append(kvp_note)
    thickness = _float_or_none(first, "SliceThickness")
    if "SliceThickness" in first and (thickness is None or not SLICE_THICKNESS_RANGE_MM[0] <= thickness
                                      <= SLICE_THICKNESS_RANGE_MM[1]):
        notes.append(f"SliceThickness {_raw_text(first, 'SliceThickness')} in {Path(files[0]).name} is not a "
                     f"thickness of {SLICE_THICKNESS_RANGE_MM[0]:g}-{SLICE_THICKNESS_RANGE_MM[1]:g} mm: not used "
                     "(the slice spacing stands for it)")
        thickness = None
    _check_reader_geometry(image, first, positions, folder)
    info = ScanInfo(
        path=str(folder), format="dicom", input_grid=_grid_of(image),
        series_uid=str(first.get("SeriesInstanceUID", "") or chosen.key),
        kvp=kvp,
        contrast_agent=str(attr("ContrastBolusAgent")) if attr("ContrastBolusAgent") is not None else None,
        convolution_kernel=str(attr("ConvolutionKernel")) if attr("ConvolutionKernel") is not None else None,
        manufacturer=str(attr("Manufacturer")) if attr("Manufacturer") is not None else None,
        patient_id=str(attr("PatientID")) if attr("PatientID") is not None else None,
        slice_thickness_mm=thickness, notes=tuple(notes), source_files=tuple(files),
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
        Not 3-D; a voxel size outside :data:`VOXEL_SIZE_RANGE_MM`; fewer than :data:`MIN_SLICES` slices or less than
        :data:`MIN_Z_EXTENT_MM` of cranio-caudal coverage; a NaN or infinite
        voxel; a constant image; no voxel below -500 HU (no air, so not CT in HU).
    """
    warnings = []
    if hu.ndim != 3:
        raise InvalidInputError(f"expected a 3-D volume, got {hu.ndim} dimensions", source)
    lo, hi = VOXEL_SIZE_RANGE_MM
    for axis, size in zip("LPS", grid.spacing_mm):
        if not (np.isfinite(size) and lo <= size <= hi):
            raise InvalidInputError(f"voxel size {size:g} mm along {axis} is not {lo:g}-{hi:g} mm: the header's "
                                    "geometry is broken (pixdim, sform/qform or PixelSpacing)", source)
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
    with quiet_libraries(native=False):  # pydicom's warnings; the C readers are quietened where they are called
        return _read_ct(Path(path), series_uid, files)


def _read_ct(path: Path, series_uid: str | None, files: Sequence[str | Path] | None) -> tuple[CTVolume, list[str]]:
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
            return _read_ct(path.parent, series_uid, None)
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
        ``path`` made absolute with symlinks resolved (``os.path.realpath``):
        the folder a run replaces. Use it for :func:`output_lock` and
        :func:`ctbmd.report.write_outputs`.

    Raises
    ------
    UsageError
        ``path`` is a file, lies under a file, or it or its nearest existing
        parent cannot be written; it is the root folder or a mount point (a
        rename cannot replace it); or it holds files that are not an earlier
        result, which replacing it would delete (exit 2), with the reason.
    """
    given = path
    path = Path(os.path.realpath(path))  # a symlink's target, "." and ".." by name: the folder that is replaced
    if path.parent == path:
        raise UsageError("is the root folder: give a folder to hold the result", given)
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe == path and path.is_dir() and (os.path.ismount(path) or path.stat().st_dev != path.parent.stat().st_dev):
        raise UsageError("is a mount point: a run replaces its output folder whole by renaming a new one into its "
                         "place, which a mount point cannot take; give a folder inside it", given)
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

    Parameters
    ----------
    path : str or Path
        The output folder (resolved, :func:`check_output_dir`); its parent is
        created when missing.

    Yields
    ------
    Path
        ``path``.

    Raises
    ------
    UsageError
        Another run holds the lock (exit 2).
    """
    import fcntl  # POSIX only: imported here, so that reading and analysing work elsewhere too

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

    Parameters
    ----------
    path : str or Path
        The output folder.

    Returns
    -------
    Path
        ``<parent>/.<name>.ctbmd-staging-XXXX``, created empty.
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

    Parameters
    ----------
    path : str or Path
        The output folder (resolved). Its name is matched literally, not as a
        glob pattern.

    Returns
    -------
    list of str
        One line per thing removed or restored.
    """
    path = Path(path)
    done = []
    if not path.parent.is_dir():
        return done
    for leftover in sorted(path.parent.glob(f".{glob.escape(path.name)}{OLD_INFIX}*")):
        if not path.exists():
            os.rename(leftover, path)
            done.append(f"restored the earlier result {path} from {leftover.name} (an interrupted run)")
        else:
            shutil.rmtree(leftover, ignore_errors=True)
            done.append(f"removed {leftover.name} (an interrupted run)")
    for leftover in sorted(path.parent.glob(f".{glob.escape(path.name)}{STAGING_INFIX}*")):
        if leftover.is_symlink():
            leftover.unlink()
        else:
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

    Parameters
    ----------
    staging : str or Path
        The complete new folder, on the same file system as ``path``.
    path : str or Path
        The output folder to replace (resolved; not a mount point).

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
