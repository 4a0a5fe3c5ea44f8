"""``report.html`` for one scan and ``cohort.html`` for a batch: self-contained pages, images inlined.

Both are rendered with Jinja2 (autoescaping on, so text from DICOM headers or
file names cannot inject markup) from the templates in ``templates/``. They
carry no script and load nothing: every image is a base64 ``data:`` URI, so a
page opens offline in any browser and can be mailed or archived as one file.
"""

from __future__ import annotations

import base64
import io as _io
from pathlib import Path

from ctbmd.classify import CATEGORIES
from ctbmd.result import model_value_key, model_value_text

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Arial,sans-serif;margin:0 auto;max-width:1200px;padding:0 16px 32px;color:#1b1b1b;background:#f4f5f7}
.ruo{background:#7a1f1f;color:#fff;padding:8px 12px;font-weight:600;margin:0 -16px}
h1{font-size:1.45em;margin:16px 0 4px}h2{font-size:1.15em;margin:0 0 8px}h3{font-size:1em}
.meta,.small{color:#555;font-size:.88em}
.card{background:#fff;border-radius:6px;padding:12px 16px;margin:12px 0;box-shadow:0 1px 2px rgba(0,0,0,.12)}
.category{font-size:1.9em;font-weight:700;margin:4px 0}.uncertain{font-size:.55em;color:#8a5a00}
.cat-normal .category{color:#1d6b2f}.cat-osteopenia .category{color:#9a6700}.cat-osteoporosis .category{color:#a11d1d}.cat-none .category{color:#555}
table{border-collapse:collapse;margin:6px 0;font-size:.92em}th,td{border:1px solid #d4d7dc;padding:3px 8px;text-align:left}
th{background:#eef0f3}tr.used td{background:#eef6ff}tr.hit td{background:#fff3c4;font-weight:600}
img{max-width:100%;height:auto;background:#000}footer{color:#555;font-size:.85em;margin-top:18px}
"""


def _fmt(value, digits: int = 1) -> str:
    """A number with ``digits`` decimals, or an en dash for None."""
    if value is None:
        return "–"
    return f"{float(value):.{digits}f}"


def _environment():
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("ctbmd.report", "templates"),
                             autoescape=jinja2.select_autoescape(["html", "j2"]), undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    env.globals["fmt"] = _fmt
    return env


def render_report_html(result: dict, png: bytes, title: str) -> str:
    """The ``report.html`` page of one analysis.

    Parameters
    ----------
    result : dict
        The ``result.json`` content (:meth:`ctbmd.result.Result.to_dict`).
    png : bytes
        ``report.png``, inlined as a data URI.
    title : str
        The scan's name in the heading (the input's file or folder name; a
        neutral name when de-identified).

    Returns
    -------
    str
        The HTML document: the research-use notice, the patient category with the
        ACR-QCT thresholds, warnings, the picture with the labelled column, the
        table of levels (HU, BMD with 95% interval, flags), the calibration
        (method, energy, slope, reference tissues) and the labelling evidence.
    """
    p = result["patient"]
    model = result.get("model")
    model_value = None if not model else model_value_text(model["target"], p.get(model_value_key(model["target"])),
                                                          model)
    from markupsafe import Markup

    return _environment().get_template("report.html.j2").render(
        r=result, p=p, c=result["calibration"], lab=result.get("labelling"), title=title, css=Markup(CSS),
        png_b64=base64.b64encode(png).decode("ascii"), model=model, model_value=model_value,
        category_ranges=category_ranges(p["thresholds_mg_cm3"]["osteoporosis_below"],
                                        p["thresholds_mg_cm3"]["normal_above"]))


def category_ranges(osteoporosis_below: float, normal_above: float) -> list[tuple[str, str]]:
    """Each ACR-QCT category with its BMD range as text, from high to low BMD.

    Parameters
    ----------
    osteoporosis_below, normal_above : float
        The thresholds, mg/cm³ (:data:`ctbmd.classify.ACR_OSTEOPOROSIS_MG_CM3`, ``ACR_NORMAL_MG_CM3``).

    Returns
    -------
    list of (str, str)
        ``[("normal", "> 120"), ("osteopenia", "80–120"), ("osteoporosis", "< 80")]`` for the ACR values.
    """
    texts = (f"> {normal_above:g}", f"{osteoporosis_below:g}–{normal_above:g}", f"< {osteoporosis_below:g}")
    return list(zip(CATEGORIES, texts))


def cohort_figure_png(bmd_by_category: dict[str, list[float]], thresholds: tuple[float, float]) -> bytes:
    """A histogram of patient BMD coloured by ACR-QCT category, with the thresholds, as PNG bytes.

    Parameters
    ----------
    bmd_by_category : dict of str to list of float
        Category (``normal``, ``osteopenia``, ``osteoporosis``) -> patient BMD values (mg/cm³).
    thresholds : tuple of float
        The ACR-QCT osteoporosis and normal thresholds (mg/cm³), drawn as lines.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401 - registers the PNG writer
    from matplotlib.figure import Figure

    colours = dict(zip(CATEGORIES, ("#1d6b2f", "#d89b00", "#a11d1d")))
    fig = Figure(figsize=(7, 3.2))
    ax = fig.subplots()
    values = [v for vs in bmd_by_category.values() for v in vs]
    lo, hi = (min(values + [40.0]), max(values + [200.0]))
    bins = list(range(int(lo // 10 * 10), int(hi // 10 * 10) + 20, 10))
    data = [bmd_by_category.get(c, []) for c in colours]
    ax.hist(data, bins=bins, stacked=True, color=list(colours.values()),
            label=[f"{c} (n={len(d)})" for c, d in zip(colours, data)])
    for t in thresholds:
        ax.axvline(t, color="0.2", ls="--", lw=1)
    ax.set_xlabel("patient trabecular BMD (mg/cm³ K2HPO4)")
    ax.set_ylabel("scans")
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def render_cohort_html(patients: list[dict], failures: list[dict], thresholds: tuple[float, float],
                       title: str) -> str:
    """The ``cohort.html`` page of a batch.

    Parameters
    ----------
    patients : list of dict
        One per finished scan: ``scan_id``, ``bmd_mg_cm3`` (or None),
        ``category`` (or None), ``category_certain``, ``levels_used`` (str),
        ``warnings`` (int) and ``report`` (the relative link to its report.html).
    failures : list of dict
        One per failed scan: ``scan_id``, ``source``, ``exit_code``, ``reason``.
    thresholds : tuple of float
        ACR-QCT (osteoporosis, normal) thresholds in mg/cm³.
    title : str
        The batch folder's name.
    """
    by_category: dict[str, list[float]] = {}
    for row in patients:
        if row["category"] is not None and row["bmd_mg_cm3"] is not None:
            by_category.setdefault(row["category"], []).append(float(row["bmd_mg_cm3"]))
    counts = {c: len(by_category.get(c, [])) for c in CATEGORIES}
    counts["not classified"] = sum(1 for row in patients if row["category"] is None)
    figure = cohort_figure_png(by_category, thresholds) if by_category else None
    from markupsafe import Markup

    return _environment().get_template("cohort.html.j2").render(
        patients=patients, failures=failures, counts=counts, title=title, css=Markup(CSS), thresholds=thresholds,
        category_ranges=category_ranges(*thresholds),
        png_b64=None if figure is None else base64.b64encode(figure).decode("ascii"))


def scan_title(path: str, deidentified: bool) -> str:
    """The scan's name for headings: the input's last two path parts (``lidc_case/dicom``, ``case/ct.nii.gz``),
    or ``de-identified scan``."""
    if deidentified:
        return "de-identified scan"
    parts = Path(path).parts
    return "/".join(parts[-2:]) if parts else str(path)
