"""PACS round trip through Orthanc's REST API: pull a CT series, analyse it, push SEG, SR and SC back.

``ctbmd pacs --url URL --series UID --out DIR [--push]`` (:func:`pull_analyse_push`):

1. look the SeriesInstanceUID up (``POST /tools/lookup``) and check that the
   series is CT (``GET /series/{id}``) before anything is downloaded;
2. download it as one archive (``GET /series/{id}/archive``) into a temporary
   folder and run :func:`ctbmd.api.run` on it, which writes every output into
   ``DIR`` (the DICOM SEG, SR and Secondary Capture included);
3. with ``push``, store the three objects (``POST /instances``). They carry the
   source's StudyInstanceUID, so Orthanc files them in the same study; each
   answer is checked for that study. If one store fails, those already
   stored are deleted again, so a refused push leaves the PACS as it was.

Orthanc REST API: https://orthanc.uclouvain.be/book/users/rest.html (the
calls above exist since Orthanc 1.0). Requests are made with ``requests``;
HTTP basic authentication takes the user from ``--user`` and the password
from the environment variable :data:`PASSWORD_ENV`, never from the command line.

Failures are one-line :class:`ctbmd.errors.CtbmdError` subclasses with their
own exit codes: :class:`~ctbmd.errors.PacsUnreachableError` (7),
:class:`~ctbmd.errors.SeriesNotFoundError` (8),
:class:`~ctbmd.errors.PacsRefusedError` (9), and
:class:`~ctbmd.errors.InvalidInputError` (3) for a series that is not CT.
"""

from __future__ import annotations

import tempfile
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

from ctbmd.errors import InvalidInputError, PacsRefusedError, PacsUnreachableError, SeriesNotFoundError, UsageError

#: Environment variable holding the PACS password for ``--user``.
PASSWORD_ENV = "CTBMD_PACS_PASSWORD"
#: (connect, read) timeouts in seconds.
TIMEOUT_S = (10.0, 300.0)


@dataclass(frozen=True)
class PacsSeries:
    """A series as Orthanc indexes it.

    Attributes
    ----------
    orthanc_id, study_orthanc_id : str
        Orthanc's resource IDs of the series and its study.
    series_uid, study_uid : str
        SeriesInstanceUID and StudyInstanceUID.
    modality : str
        Modality (0008,0060).
    n_instances : int
    """

    orthanc_id: str
    study_orthanc_id: str
    series_uid: str
    study_uid: str
    modality: str
    n_instances: int


class Orthanc:
    """A minimal Orthanc REST client (one ``requests.Session``).

    Parameters
    ----------
    url : str
        Base URL of the Orthanc REST API, e.g. ``http://127.0.0.1:8042``.
    user, password : str, optional
        HTTP basic authentication.
    timeout : tuple of float
        (connect, read) timeouts in seconds.
    """

    def __init__(self, url: str, user: str | None = None, password: str | None = None,
                 timeout: tuple[float, float] = TIMEOUT_S):
        import requests

        from urllib.parse import urlsplit, urlunsplit

        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UsageError("PACS URL must be http(s)://HOST[:PORT][/PATH]")
        # credentials in the URL are used, never repeated in messages or outputs
        netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
        self.url = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
        self.session = requests.Session()
        if user is None and parts.username:
            user, password = parts.username, parts.password
        if user is not None:
            self.session.auth = (user, password or "")
        self.timeout = timeout

    def request(self, method: str, path: str, what: str, not_found: type = SeriesNotFoundError, **kwargs):
        """One REST call; returns the ``requests.Response`` of a 2xx answer.

        Raises
        ------
        PacsUnreachableError
            No connection, a timeout, any other transport error, or a 5xx answer.
        PacsRefusedError
            HTTP 401, 403 or another 4xx answer.
        SeriesNotFoundError
            HTTP 404 (``not_found`` is raised instead when given).
        """
        import requests

        try:
            r = self.session.request(method, self.url + path, timeout=self.timeout, **kwargs)
        except requests.ConnectionError as exc:
            cause = "connection refused" if "refused" in str(exc).lower() else "no connection"
            raise PacsUnreachableError(f"cannot reach the PACS ({cause}) while trying to {what}", self.url) from None
        except requests.Timeout:
            raise PacsUnreachableError(f"the PACS did not answer in time while trying to {what}", self.url) from None
        except requests.RequestException as exc:
            raise PacsUnreachableError(f"cannot talk to the PACS while trying to {what} ({type(exc).__name__})",
                                       self.url) from None
        if r.status_code in (401, 403):
            hint = ("forbidden for this user" if r.status_code == 403
                    else f"credentials refused (give `user` and set {PASSWORD_ENV})")
            raise PacsRefusedError(f"the PACS refused to {what} (HTTP {r.status_code}: {hint})", self.url)
        if r.status_code == 404:
            raise not_found(f"not found on the PACS while trying to {what} (HTTP 404)", self.url)
        if r.status_code >= 500:
            raise PacsUnreachableError(f"the PACS failed to {what} (HTTP {r.status_code})", self.url)
        if r.status_code >= 400:
            raise PacsRefusedError(f"the PACS refused to {what} (HTTP {r.status_code})", self.url)
        return r

    def system(self) -> dict:
        """``GET /system``: checks that an Orthanc answers at the URL.

        Raises
        ------
        PacsUnreachableError
            No answer, or an answer that is not Orthanc's JSON.
        """
        r = self.request("GET", "/system", "read its system information", not_found=PacsUnreachableError)
        try:
            info = r.json()
        except ValueError:
            info = None
        if not isinstance(info, dict) or "ApiVersion" not in info:
            raise PacsUnreachableError("not an Orthanc REST API at this URL (GET /system gave no ApiVersion)", self.url)
        return info

    def find_series(self, series_uid: str) -> PacsSeries:
        """Look a SeriesInstanceUID up.

        Raises
        ------
        SeriesNotFoundError
            No series with that UID.
        """
        hits = self.request("POST", "/tools/lookup", "look up the series", data=series_uid).json()
        ids = [h["ID"] for h in hits if h.get("Type") == "Series"]
        if not ids:
            raise SeriesNotFoundError(f"no series with SeriesInstanceUID {series_uid} on the PACS", self.url)
        info = self.request("GET", f"/series/{ids[0]}", "read the series").json()
        study = self.request("GET", f"/studies/{info['ParentStudy']}", "read the study").json()
        return PacsSeries(orthanc_id=ids[0], study_orthanc_id=info["ParentStudy"], series_uid=series_uid,
                          study_uid=study["MainDicomTags"].get("StudyInstanceUID", ""),
                          modality=info["MainDicomTags"].get("Modality", ""), n_instances=len(info["Instances"]))

    def download_series(self, series: PacsSeries, folder: str | Path) -> list[Path]:
        """Download every instance of ``series`` into ``folder`` (``GET /series/{id}/archive``); return the files.

        Raises
        ------
        PacsUnreachableError
            The archive is not a readable ZIP, or holds fewer files than the series has instances.
        """
        folder = Path(folder)
        import requests

        archive = folder / "series.zip"
        with self.request("GET", f"/series/{series.orthanc_id}/archive", "download the series", stream=True) as r:
            try:
                with open(archive, "wb") as f:
                    for chunk in r.iter_content(chunk_size=1 << 20):
                        f.write(chunk)
            except requests.RequestException as exc:
                raise PacsUnreachableError(f"the series download broke off ({type(exc).__name__})", self.url) from None
        try:
            with zipfile.ZipFile(archive) as z:
                names = [n for n in z.namelist() if not n.endswith("/")]
                (folder / "dicom").mkdir(exist_ok=True)
                for i, n in enumerate(names):  # flat names: no path from the archive reaches the file system
                    (folder / "dicom" / f"{i:05d}.dcm").write_bytes(z.read(n))
        except zipfile.BadZipFile:
            raise PacsUnreachableError("the series archive from the PACS is not a ZIP file", self.url) from None
        archive.unlink()
        files = sorted((folder / "dicom").glob("*.dcm"))
        if len(files) < series.n_instances:
            raise PacsUnreachableError(f"the series archive holds {len(files)} files, the series "
                                       f"{series.n_instances} instances", self.url)
        return files

    def store(self, paths: list[Path], study_orthanc_id: str) -> list[str]:
        """Store DICOM files (``POST /instances``) into the study ``study_orthanc_id``; all or none.

        Returns
        -------
        list of str
            Orthanc IDs of the stored instances.

        Raises
        ------
        PacsRefusedError
            A store was refused (HTTP 4xx), or an object landed outside the
            study. The instances this call added are deleted again (not those the
            PACS already held); the message says "nothing was pushed", or names
            the objects that could not be removed.
        PacsUnreachableError
            The connection failed during the push (same clean-up).
        """
        added: list[str] = []
        stored: list[str] = []
        try:
            for p in paths:
                answer = self.request("POST", "/instances", f"store {p.name}", data=p.read_bytes(),
                                      headers={"Content-Type": "application/dicom"}).json()
                stored.append(answer["ID"])
                if answer.get("Status") != "AlreadyStored":
                    added.append(answer["ID"])
                if answer.get("ParentStudy") != study_orthanc_id:
                    raise PacsRefusedError(f"{p.name} was filed outside the source study", self.url)
        except (PacsRefusedError, PacsUnreachableError) as exc:
            left = []
            for orthanc_id in added:
                try:
                    self.request("DELETE", f"/instances/{orthanc_id}", "remove a partly pushed object")
                except (PacsRefusedError, PacsUnreachableError, SeriesNotFoundError):
                    left.append(orthanc_id)
            outcome = ("nothing was pushed" if not left else
                       f"{len(left)} pushed objects could not be removed again (Orthanc IDs {', '.join(left)})")
            raise type(exc)(f"{exc.reason}; {outcome}", exc.path) from None
        return stored


def pull_analyse_push(url: str, series_uid: str, out_dir: str | Path, *, push: bool = False,
                      user: str | None = None, password: str | None = None, deidentify: bool = False,
                      **options):
    """Pull ``series_uid`` from the Orthanc at ``url``, analyse it into ``out_dir`` and optionally push the results.

    Parameters
    ----------
    url : str
        Orthanc REST API base URL.
    series_uid : str
        SeriesInstanceUID of the CT series.
    out_dir : str or Path
        Output folder, as for :func:`ctbmd.api.run` (written all or none).
    push : bool
        Store ``vertebrae_seg.dcm``, ``bmd_sr.dcm`` and ``report_sc.dcm`` into the source study.
    user, password : str, optional
        HTTP basic authentication.
    deidentify : bool
        De-identify the outputs (not with ``push``: de-identified objects do not
        belong in the identified source study).
    **options
        Analysis options of :func:`ctbmd.api.analyse`.

    Returns
    -------
    result : ctbmd.Result
    pushed : list of str
        Orthanc IDs of the stored objects (empty without ``push``).

    Raises
    ------
    UsageError
        ``push`` with ``deidentify``; an ``out_dir`` that cannot be written
        (:func:`ctbmd.io.check_output_dir`), checked before the download.
    PacsUnreachableError, SeriesNotFoundError, PacsRefusedError
        See the module docstring; nothing is pushed.
    InvalidInputError
        The series is not CT (checked before downloading), or cannot be analysed.
    CtbmdError
        Any refusal of the analysis (e.g. no spine); nothing is pushed.
    """
    from ctbmd.api import run
    from ctbmd.io import read_ct
    from ctbmd.report import DICOM_FILES, OUTPUT_FILES

    from ctbmd.io import check_output_dir

    if push and deidentify:
        raise UsageError("`push` stores the results in the source study; it cannot be combined with `deidentify`")
    out_dir = check_output_dir(out_dir, OUTPUT_FILES + DICOM_FILES)  # before the download, not after the analysis
    pacs = Orthanc(url, user, password)
    pacs.system()
    series = pacs.find_series(series_uid)
    if series.modality != "CT":
        raise InvalidInputError(f"series {series_uid} is not CT (Modality {series.modality or 'missing'})", url)
    with tempfile.TemporaryDirectory(prefix="ctbmd-pacs-") as tmp:
        pacs.download_series(series, tmp)
        ct = read_ct(Path(tmp) / "dicom", series_uid)
        # the outputs name the series by its PACS resource, not by the temporary folder it was read from
        ct = replace(ct, info=replace(ct.info, path=f"{pacs.url}/series/{series.orthanc_id}"))
        result = run(ct, out_dir, deidentify=deidentify, **options)
    pushed: list[str] = []
    if push:
        files = [Path(out_dir) / name for name in DICOM_FILES]
        if not all(f.exists() for f in files):  # write_outputs removes an earlier run's objects
            why = next((w for w in _warnings(out_dir) if "DICOM SEG" in w), "DICOM SEG/SR/SC not written")
            raise InvalidInputError(f"{why}; nothing was pushed, the other results are in {out_dir}", url)
        try:
            pushed = pacs.store(files, series.study_orthanc_id)
        except (PacsRefusedError, PacsUnreachableError) as exc:
            raise type(exc)(f"{exc.reason}; the results are in {out_dir}", exc.path) from None
    return result, pushed


def _warnings(out_dir: str | Path) -> list[str]:
    """The warnings of the ``result.json`` in ``out_dir`` (empty when unreadable)."""
    import json

    try:
        return list(json.loads((Path(out_dir) / "result.json").read_text())["warnings"])
    except (OSError, ValueError, KeyError):
        return []
