"""DICOM series discovery and choice: group the image files of a folder into series, pick the one to read.

Only headers are read here (pydicom, no pixel data); :mod:`ctbmd.io.dicom`
checks and reads the chosen series.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from ctbmd.errors import InvalidInputError
from ctbmd.io.dicom_header import attr_float, attr_int, attr_numbers, attr_text
from ctbmd.io.limits import MAX_MATRIX, MIN_SLICES
from ctbmd.io.quiet import log, quiet_libraries

#: SOP class UIDs of secondary captures (screenshots, not slices) start so (DICOM PS3.4 B.5).
_SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"


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
    """Every file under ``folder``, recursively, in name order within each folder."""
    for root, _dirs, files in os.walk(folder):
        for name in sorted(files):
            yield Path(root) / name


#: The attributes :func:`scan_dicom_folder` reads when it does not keep the headers.
_INDEX_TAGS = ("SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID", "SeriesNumber", "SeriesDescription",
               "Modality", "ImageType", "Rows", "Columns", "ImageOrientationPatient", "ImagePositionPatient",
               "PixelSpacing", "SliceThickness")


class Reconstruction(NamedTuple):
    """What tells two reconstructions in one series apart (:func:`_reconstruction`); None where unreadable.

    Attributes
    ----------
    orientation : tuple of float or None
        ImageOrientationPatient, rounded to 0.01.
    rows, columns : int or None
        Matrix (1 to :data:`MAX_MATRIX`).
    pixel_spacing_mm : tuple of float or None
        PixelSpacing, rounded to 0.001 mm.
    slice_thickness_mm : float or None
        SliceThickness, rounded to 0.01 mm.
    """

    orientation: tuple[float, ...] | None
    rows: int | None
    columns: int | None
    pixel_spacing_mm: tuple[float, ...] | None
    slice_thickness_mm: float | None

    @property
    def plane(self) -> tuple:
        """Orientation and matrix: what a scout or an image of another plane differs in."""
        return self.orientation, self.rows, self.columns


class SeriesMeta(NamedTuple):
    """The per-series fields of :class:`DicomSeries` after ``headers``, read from one slice (same names)."""

    modality: str
    image_type: tuple[str, ...]
    axial: bool
    description: str
    study_uid: str
    slice_thickness_mm: float | None
    series_number: int | None


@dataclass(frozen=True)
class _Slice:
    """One image file as :func:`scan_dicom_folder` groups it: its header (None when headers are not kept),
    the geometry that splits reconstructions, and its series fields."""

    file: str
    header: object | None
    reconstruction: Reconstruction
    meta: SeriesMeta


def _reconstruction(ds, iop: np.ndarray) -> Reconstruction:
    """What tells two reconstructions in one series apart: orientation (to 0.01), matrix, pixel spacing and
    slice thickness (to 0.01 mm). A scout stored without the LOCALIZER type differs in orientation or matrix."""
    spacing = attr_numbers(ds, "PixelSpacing", 2)
    thickness = attr_float(ds, "SliceThickness")
    return Reconstruction(tuple(np.round(iop, 2).tolist()) if np.all(np.isfinite(iop)) else None,
                          *(n if n is not None and 0 < n <= MAX_MATRIX else None
                            for n in (attr_int(ds, "Rows"), attr_int(ds, "Columns"))),
                          None if spacing is None else tuple(np.round(spacing, 3).tolist()),
                          None if thickness is None else round(thickness, 2))


def _describe(recon: Reconstruction, count: int) -> str:
    """One line on a reconstruction, for the note on a split series."""
    iop, rows, cols, spacing, thickness = recon
    if iop is None:
        plane = "unknown orientation"
    else:
        normal = np.abs(np.cross(iop[:3], iop[3:]))
        plane = ("axial", "coronal", "sagittal")[[2, 1, 0].index(int(np.argmax(normal)))]
    px = f"{spacing[0]:g} mm pixels" if spacing else "no pixel size"
    th = f"{thickness:g} mm slices" if thickness is not None else "no slice thickness"
    return f"{count} {plane} images {rows}x{cols}, {px}, {th}"


def _split_reconstructions(groups: dict[str, list[_Slice]], notes: list[str]) -> dict[str, list[_Slice]]:
    """Split a SeriesInstanceUID that holds more than one reconstruction, or a scout, into ``UID#1``,
    ``UID#2`` ... (most images first), adding one line per split UID to ``notes``.

    A part is split off when its orientation or matrix differs from the largest part's (a scout or another
    plane), or when it has at least :data:`MIN_SLICES` images of another pixel spacing or slice thickness (a
    second reconstruction). Fewer such images, and slices whose orientation cannot be read, stay with the
    largest part, where :func:`read_dicom_series` names the file and the attribute.
    """
    out: dict[str, list[_Slice]] = {}
    for key, members in groups.items():
        parts: dict[Reconstruction, list[_Slice]] = {}
        for item in members:
            parts.setdefault(item.reconstruction, []).append(item)
        # a part whose orientation or matrix cannot be read is a broken slice, not a reconstruction
        known = sorted((p for p in parts if None not in p.plane), key=lambda p: (-len(parts[p]), str(tuple(p))))
        if key.startswith("no-uid/") or len(known) <= 1:
            out[key] = members
            continue
        main, separate = known[0], [known[0]]
        for p in known[1:]:
            if p.plane != main.plane or len(parts[p]) >= MIN_SLICES:
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
    groups: dict[str, list[_Slice]] = {}
    tags = None if keep_headers else list(_INDEX_TAGS)
    unreadable: list[tuple[str, str, object]] = []
    with quiet_libraries(native=False):
        headers = [(f, _read_header(f, tags)) for f in (map(Path, files) if files is not None else _iter_files(folder))]
    for f, ds in headers:
        if ds is None:
            continue
        if "Rows" not in ds or "ImageOrientationPatient" not in ds or "ImagePositionPatient" not in ds:
            continue
        image_type = tuple(v.upper() for v in attr_text(ds, "ImageType").split("\\") if v)
        sop_class = attr_text(ds, "SOPClassUID")
        if "LOCALIZER" in image_type or sop_class.startswith(_SECONDARY_CAPTURE_PREFIX):
            continue
        iop = attr_numbers(ds, "ImageOrientationPatient", 6)
        uid = attr_text(ds, "SeriesInstanceUID")
        # without a UID, slices of one series share a study, a folder, a series number, orientation and size
        base = "no-uid/" + "/".join([attr_text(ds, "StudyInstanceUID"), os.path.dirname(str(f)),
                                     attr_text(ds, "SeriesNumber"), f"{attr_text(ds, 'Rows')}x{attr_text(ds, 'Columns')}"])
        if iop is None:  # kept: read_dicom_series names the file and the attribute if its series is chosen
            if not uid:
                unreadable.append((base, str(f), ds if keep_headers else None))
                continue
            iop = np.full(6, np.nan)
        key = uid or f"{base}/{np.round(iop, 3).tolist()}"
        groups.setdefault(key, []).append(_Slice(str(f), ds if keep_headers else None, _reconstruction(ds, iop),
                                                 _series_meta(ds, image_type, iop)))
    for base, f, ds in unreadable:  # a slice without a usable orientation joins the one series it matches
        matches = [k for k in groups if k.startswith(base + "/")]
        if len(matches) == 1:
            first = groups[matches[0]][0]
            groups[matches[0]].append(_Slice(f, ds, first.reconstruction, first.meta))
    if not groups:
        raise InvalidInputError("no DICOM image files found in folder", folder)
    if notes is None:
        notes = []
    groups = _split_reconstructions(groups, notes)
    for line in notes:
        log.info(line)
    return [DicomSeries(k, tuple(m.file for m in v), tuple(m.header for m in v) if keep_headers else (),
                        **next((m.meta for m in v if None not in m.reconstruction.plane), v[0].meta)._asdict())
            for k, v in groups.items()]


def _series_meta(ds, image_type: tuple[str, ...], iop: np.ndarray) -> SeriesMeta:
    """The per-series fields of :class:`DicomSeries` after ``headers``, read from one slice."""
    normal = np.cross(iop[:3], iop[3:])
    return SeriesMeta(attr_text(ds, "Modality"), image_type, bool(abs(normal[2]) > np.cos(np.radians(30))),
                      attr_text(ds, "SeriesDescription"), attr_text(ds, "StudyInstanceUID"),
                      attr_float(ds, "SliceThickness"), attr_int(ds, "SeriesNumber"))


class _Rank(NamedTuple):
    """Sort key of :func:`choose_series`, best last: compared field by field, in this order."""

    axial: bool
    original_primary: bool
    slices: int
    minus_thickness_mm: float  # thinner slices rank higher; unknown thickness last
    minus_series_number: float  # lower SeriesNumber ranks higher; unknown last

    @property
    def kind(self) -> tuple:
        """Plane, ImageType and slice count: series alike in these are a tie."""
        return self.axial, self.original_primary, self.slices


def _series_rank(s: DicomSeries) -> _Rank:
    """Sort key of :func:`choose_series`, best last."""
    thickness = s.slice_thickness_mm if s.slice_thickness_mm is not None else np.inf
    number = s.series_number if s.series_number is not None else np.inf
    return _Rank(s.axial, s.original_primary, len(s.files), -thickness, -number)


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
    tied = [s for s in ranked[:-1] if _series_rank(s).kind == _series_rank(best).kind]
    if tied and notes is not None:
        rank, other = _series_rank(best), _series_rank(tied[-1])
        rule = ("the thinner slices" if rank.minus_thickness_mm != other.minus_thickness_mm
                else "the lower SeriesNumber" if rank.minus_series_number != other.minus_series_number
                else "the smaller series UID")
        notes.append(f"{len(tied) + 1} CT series are alike (plane, ImageType, {len(best.files)} slices): chose "
                     f"{best.key} by {rule}; to read another give its series UID (--series-uid): "
                     + ", ".join(s.key for s in reversed(tied)))
    return best
