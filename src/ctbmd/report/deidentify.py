"""De-identification of the DICOM objects ctbmd writes: the PS3.15 Annex E Basic Profile (dicognito for UIDs,
names and dates; the profile's remove and empty actions from dicom-anonymizer's tables)."""

from __future__ import annotations

import io as _io


OWN_DESCRIPTORS = ("SeriesDescription", "ContentDescription", "ContentLabel", "ImageComments", "ContentCreatorName",
                   "DeviceSerialNumber")


def _basic_profile_tables() -> tuple[set, set]:
    """(remove, empty): the tags whose Basic Profile action is X (or X/Z, X/D, X/Z/D) and Z, from the PS3.15
    Table E.1-1 as tabulated by KitwareMedical dicom-anonymizer (edition 2026c). Z/D tags (dates and times
    such as Content Date, type 1 in the SEG and SR) are left to dicognito, which replaces them (D)."""
    from dicomanonymizer.dicom_anonymization_databases import dicomfields_2026c as table

    remove = set(table.X_TAGS) | set(table.X_Z_TAGS) | set(table.X_D_TAGS) | set(table.X_Z_D_TAGS)
    return remove, set(table.Z_TAGS)


def deidentify(datasets: list) -> list:
    """``datasets`` with the DICOM PS3.15 Annex E Basic Profile applied, with consistent new UIDs.

    Two maintained libraries, each for what it does well:

    1. dicognito (``dicognito.anonymizer.Anonymizer``) replaces UIDs, names,
       IDs, addresses and institution data and shifts dates, through one
       mapping shared by ``datasets``, so the SR's and SC's references to the
       SEG and the source series still resolve (options 113107, modified dates);
    2. then every top-level attribute left that the Basic Profile table
       (PS3.15 Table E.1-1, as tabulated by dicom-anonymizer) says to remove (X)
       is deleted and every one it says to empty (Z) is emptied: the free text
       highdicom copies from the source's Patient and Study modules (Study
       Description, Patient Comments, Additional Patient History, age, size,
       weight, ...). ctbmd's own descriptors (:data:`OWN_DESCRIPTORS`) are kept
       (Clean Descriptors option, 113105). Private tags are removed.

    PatientIdentityRemoved is set to YES and DeidentificationMethodCodeSequence
    lists 113100, 113105 and 113107 (PS3.15 E.1.1, PS3.16 CID 7050). Each
    dataset is written and read back first (pydicom), since dicognito expects
    values as read from a file (dates as strings).

    Returns
    -------
    list of pydicom.Dataset
        New datasets (as read from bytes), in the order given.
    """
    import warnings

    import pydicom
    from dicognito.anonymizer import Anonymizer
    from pydicom.dataset import Dataset
    from pydicom.tag import Tag

    remove, empty = _basic_profile_tables()
    own = {Tag(k) for k in OWN_DESCRIPTORS}
    anonymizer = Anonymizer()
    out = []
    for original in datasets:
        buf = _io.BytesIO()
        original.save_as(buf, enforce_file_format=True)
        ds = pydicom.dcmread(_io.BytesIO(buf.getvalue()))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # pydicom's note on an unknown keyword dicognito probes
            anonymizer.anonymize(ds)
        kept = {t: ds[t].value for t in own if t in ds}
        # an attribute already empty tells nothing and may be required (type 2): only values are removed
        for tag in [t for t in ds.keys() if (t.group, t.element) in remove and not ds[t].is_empty]:
            del ds[tag]
        for tag in [t for t in ds.keys() if (t.group, t.element) in empty and ds[t].VR != "SQ" and not ds[t].is_empty]:
            ds[tag].value = None
        ds.remove_private_tags()
        for t, value in kept.items():
            ds[t] = pydicom.DataElement(t, pydicom.datadict.dictionary_VR(t), value)
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = "PS3.15 Basic Profile (dicognito + Table E.1-1)"  # LO: 64 characters
        codes = []
        for value, meaning in (("113100", "Basic Application Confidentiality Profile"),
                               ("113105", "Clean Descriptors Option"),
                               ("113107", "Retain Longitudinal Temporal Information Modified Dates Option")):
            code = Dataset()
            code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = value, "DCM", meaning
            codes.append(code)
        ds.DeidentificationMethodCodeSequence = codes
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        out.append(ds)
    return out
