"""The evaluation report: ``metrics.json``, ``metrics.md``, ``pairs.csv`` and the PNG plots."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
from scipy import stats
from sklearn import metrics as skm

from ctbmd.classify import ACR_NORMAL_MG_CM3, ACR_OSTEOPOROSIS_MG_CM3, CATEGORIES, NORMAL, OSTEOPOROSIS
from ctbmd.evaluate.metrics import MIN_PAIRS, figure_text
from ctbmd.evaluate.pair import ALL_SPLITS, Paired

#: Rows of the agreement tables: (key in :meth:`Agreement.to_dict`, label, format).
_AGREEMENT_ROWS = (("n", "n", "{:.0f}"), ("r", "Pearson r", "{:.3f}"), ("p", "p", "{:.2g}"),
                   ("r2", "r²", "{:.3f}"), ("mae", "MAE (mg/cm³)", "{:.2f}"), ("rmse", "RMSE (mg/cm³)", "{:.2f}"),
                   ("bias", "bias (mg/cm³)", "{:.2f}"), ("loa_low", "LoA low (mg/cm³)", "{:.1f}"),
                   ("loa_high", "LoA high (mg/cm³)", "{:.1f}"))
#: Resolution of the PNG plots (dots per inch).
PLOT_DPI = 110


# --------------------------------------------------------------------------- markdown

def _diagnosis_rows() -> list[tuple[str, str, str]]:
    """Rows of the diagnosis table: (key in :meth:`Diagnosis.to_dict`, label, format)."""
    diag = [("n", "n", "{:.0f}"), ("accuracy", "accuracy (3 classes)", "{:.3f}")]
    for name in ("precision", "recall", "f1", "specificity"):
        diag += [(f"{name}_{c}", f"{name} {c}", "{:.3f}") for c in CATEGORIES] + [(f"{name}_macro",
                                                                                  f"{name} macro", "{:.3f}")]
    diag += [("auc_osteoporosis", "ROC AUC osteoporosis", "{:.3f}"), ("auc_low_bmd", "ROC AUC low BMD", "{:.3f}")]
    return diag


def markdown_table(result: dict) -> str:
    """The paper-style table of :func:`evaluate`'s result (GitHub markdown), one column per split."""
    splits = list(result["splits"])
    head = "| | " + " | ".join(splits) + " |\n|---|" + "---|" * len(splits) + "\n"
    lines = [f"# ctbmd evaluate ({result['kind'].upper()} reference)\n",
             f"Values with bootstrap 95% CI ({result['n_boot']} resamples of patients, seed {result['seed']}). "
             "Research use only, not a medical device.\n"]
    for s in splits:
        reason = result["splits"][s].get("not_computed", {}).get("ci")
        if reason:
            lines.append(f"\n95% CIs of {s}: not computed: {reason}.\n")
    lines.append("\n– : undefined (a ratio with no patient in its denominator, or values that do not vary).\n")

    def rows(section: str, spec) -> str:
        text = ""
        for key, label, fmt in spec:
            cells = [figure_text(result["splits"][s], f"{section}.{key}", fmt, ci=key not in ("n", "p"))
                     for s in splits]
            text += f"| {label} | " + " | ".join(cells) + " |\n"
        return text

    if result["kind"] == "qct":
        lines.append("\n## Agreement per level\n\n" + head + rows("level", _AGREEMENT_ROWS))
        lines.append("\n## Agreement per patient (mean of the levels used)\n\n" + head + rows("patient",
                                                                                           _AGREEMENT_ROWS))
    lines.append("\n## Diagnosis per patient (ACR-QCT prediction vs reference category)\n\n" + head
                 + rows("diagnosis", _diagnosis_rows()))
    binary = [(k, f"osteoporosis vs not: {k}", "{:.3f}") for k in ("accuracy", "precision", "recall",
                                                                    "specificity", "f1")]
    lines.append("\n## Osteoporosis vs not\n\n" + head + rows("diagnosis.binary", binary))
    for s in splits:
        cm = result["splits"][s]["diagnosis"]["confusion"]
        lines.append(f"\n### Confusion matrix, {s} (rows reference, columns prediction)\n\n"
                     "| | " + " | ".join(CATEGORIES) + " |\n|---|---|---|---|\n"
                     + "".join(f"| {c} | " + " | ".join(str(v) for v in row) + " |\n" for c, row in zip(CATEGORIES, cm)))
    if result["unmatched_reference"]:
        lines.append(f"\nReference patients without a prediction ({len(result['unmatched_reference'])}): "
                     + ", ".join(result["unmatched_reference"]) + "\n")
    for note in result["notes"]:
        lines.append(f"\nNote: {note}\n")
    return "".join(lines)


# --------------------------------------------------------------------------- plots

def _pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend (imported on first use)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    """Write ``fig`` as a PNG at ``path`` (atomically) and close it."""
    from ctbmd.io import write_atomic

    write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=PLOT_DPI, format="png", bbox_inches="tight"))
    _pyplot().close(fig)
    return path


def _members(p: Paired, split: str) -> np.ndarray:
    """Bool ``(n_patients,)``: the patients of ``split``."""
    return np.ones(len(p.patient_id), bool) if split == ALL_SPLITS else p.patient_split == split


def _legend(ax, **kw) -> None:
    """A legend, or none where nothing was drawn (matplotlib would warn)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**kw)


def _plot_text(result: dict, unit: str, key: str, fmt: str) -> str:
    """A figure of all patients for a plot: ``"0.912"`` or ``"not computed\\n(needs at least 3 ...)"``."""
    text = figure_text(result["splits"][ALL_SPLITS], f"{unit}.{key}", fmt)
    return f"not computed\n({text.removeprefix('not computed: ')})" if text.startswith("not computed") else text


def _no_pairs(ax, unit: str) -> None:
    """Say in an empty panel that there are no pairs (a prediction CSV with patient values has no level pairs)."""
    ax.text(0.5, 0.5, f"no {unit} pairs", ha="center", va="center", transform=ax.transAxes)


def _scatter_png(p: Paired, result: dict, out: Path) -> Path:
    """``scatter.png``: predicted vs reference BMD per level and per patient, coloured by split, with the
    identity line, the regression line and the ACR-QCT thresholds."""
    plt = _pyplot()
    splits = [s for s in result["splits"] if s != ALL_SPLITS] or [ALL_SPLITS]
    colours = dict(zip(splits, plt.get_cmap("tab10").colors))
    fig, axes = plt.subplots(1, 2, figsize=(11, 5))
    for ax, (x, y, unit) in zip(axes, ((p.level_ref, p.level_pred, "level"), (p.patient_ref, p.patient_pred,
                                                                                 "patient"))):
        pids = p.level_patient if unit == "level" else p.patient_id
        if not len(x):
            _no_pairs(ax, unit)
            continue
        lo, hi = float(np.nanmin([x.min(), y.min(), 0])), float(np.nanmax([x.max(), y.max()])) * 1.05
        for s in splits:
            ids = set(p.patient_id[_members(p, s)])
            sel = np.array([i in ids for i in pids], bool)
            ax.scatter(x[sel], y[sel], s=18, alpha=0.75, color=colours[s], label=f"{s} (n={sel.sum()})")
        ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="identity")
        if len(x) >= MIN_PAIRS["r"] and np.ptp(x) > 0:
            fit = stats.linregress(x, y)
            ax.plot([lo, hi], [fit.intercept + fit.slope * lo, fit.intercept + fit.slope * hi], "r-", lw=1.2,
                    label=f"fit y = {fit.slope:.2f}x {fit.intercept:+.1f}")
        ax.set_title(f"per {unit}: MAE {_plot_text(result, unit, 'mae', '{:.1f}')} mg/cm³, "
                     f"r² {_plot_text(result, unit, 'r2', '{:.3f}')}")
        for v in (ACR_OSTEOPOROSIS_MG_CM3, ACR_NORMAL_MG_CM3):
            ax.axvline(v, color="0.8", lw=0.8)
            ax.axhline(v, color="0.8", lw=0.8)
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_xlabel("reference BMD (mg/cm³)")
        ax.set_ylabel("predicted BMD (mg/cm³)")
        _legend(ax, fontsize=8, loc="upper left")
    return _save(fig, out / "scatter.png")


def _bland_altman_png(p: Paired, result: dict, out: Path) -> Path:
    """``bland_altman.png``: difference vs mean per level and per patient, with the bias and the limits."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, (x, y, unit) in zip(axes, ((p.level_ref, p.level_pred, "level"), (p.patient_ref, p.patient_pred,
                                                                                 "patient"))):
        m = result["splits"][ALL_SPLITS][unit]
        if not len(x):
            _no_pairs(ax, unit)
            continue
        ax.scatter((x + y) / 2, y - x, s=18, alpha=0.75)
        for v, style, label in ((m["bias"], "-", f"bias {m['bias']:+.1f}"),
                                (m["loa_low"], "--", f"LoA {m['loa_low']:+.1f}"),
                                (m["loa_high"], "--", f"LoA {m['loa_high']:+.1f}")):
            if math.isfinite(v):
                ax.axhline(v, color="r", ls=style, lw=1, label=label)
        ax.axhline(0, color="k", lw=0.6)
        ax.set_xlabel("mean of prediction and reference (mg/cm³)")
        ax.set_ylabel("prediction - reference (mg/cm³)")
        missing = ("" if math.isfinite(m["loa_low"])
                   else f"\nlimits of agreement {_plot_text(result, unit, 'loa_low', '')}")
        ax.set_title(f"Bland-Altman, per {unit} (n={len(x)}){missing}")
        _legend(ax, fontsize=8)
    return _save(fig, out / "bland_altman.png")


def _confusion_png(result: dict, out: Path) -> Path:
    """``confusion.png``: the 3x3 confusion matrix of each split."""
    plt = _pyplot()
    names = list(result["splits"])
    fig, axes = plt.subplots(1, len(names), figsize=(4.6 * len(names), 4.2), squeeze=False)
    for ax, s in zip(axes[0], names):
        cm = np.array(result["splits"][s]["diagnosis"]["confusion"])
        ax.imshow(cm, cmap="Blues")
        for i in range(3):
            for j in range(3):
                ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                        color="white" if cm[i, j] > cm.max() / 2 else "black")
        ax.set_xticks(range(3), CATEGORIES, rotation=20)
        ax.set_yticks(range(3), CATEGORIES)
        ax.set_xlabel("predicted (ACR-QCT)")
        if ax is axes[0][0]:
            ax.set_ylabel("reference")
        else:
            ax.set_yticklabels([])
        ax.set_title(f"{s}: accuracy {result['splits'][s]['diagnosis']['accuracy']:.2f}")
    fig.tight_layout()
    return _save(fig, out / "confusion.png")


def _roc_png(p: Paired, result: dict, out: Path) -> Path:
    """``roc.png``: ROC curves of osteoporosis and of low BMD per split, scored by the predicted BMD."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
    for ax, (name, key, positive_of) in zip(axes, (
            ("osteoporosis", "auc_osteoporosis", lambda c: c == OSTEOPOROSIS),
            ("low BMD", "auc_low_bmd", lambda c: c != NORMAL))):
        for s in result["splits"]:
            sel = _members(p, s)
            y = positive_of(p.patient_ref_category[sel])
            if 0 < y.sum() < len(y):
                fpr, tpr, _ = skm.roc_curve(y, -p.patient_pred[sel])
                ax.plot(fpr, tpr, label=f"{s}: AUC {result['splits'][s]['diagnosis'][key]:.3f}")
        ax.plot([0, 1], [0, 1], "k:", lw=0.8)
        ax.set_xlabel("1 - specificity")
        ax.set_ylabel("sensitivity")
        ax.set_title(f"ROC, {name} (score: predicted BMD)")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="lower right")
        else:
            ax.text(0.5, 0.5, _plot_text(result, "diagnosis", key, ""), ha="center", va="center",
                    transform=ax.transAxes, fontsize=9)
    return _save(fig, out / "roc.png")


def write_plots(p: Paired, result: dict, out: Path) -> list[Path]:
    """Write the PNG plots of :func:`evaluate`'s ``result`` into the folder ``out``; return their paths.

    ``scatter.png`` (with identity and regression lines) and ``bland_altman.png``
    for a QCT reference; ``confusion.png`` and ``roc.png`` always.
    """
    written = [_scatter_png(p, result, out), _bland_altman_png(p, result, out)] if p.kind == "qct" else []
    return written + [_confusion_png(result, out), _roc_png(p, result, out)]


# --------------------------------------------------------------------------- files

def _json_safe(o):
    """``o`` with every non-finite float (NaN, inf) replaced by None, for strict JSON."""
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {k: _json_safe(v) for k, v in o.items()}
    if isinstance(o, list):
        return [_json_safe(v) for v in o]
    return o


def _write_pairs_csv(p: Paired, path: Path) -> None:
    """One row per patient: ID, split, predicted and reference BMD (mg/cm³, 2 decimals) and categories."""
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["patient_id", "split", "pred_bmd_mg_cm3", "ref_bmd_mg_cm3", "pred_category", "ref_category"])
        for row in zip(p.patient_id, p.patient_split, p.patient_pred, p.patient_ref, p.patient_pred_category,
                       p.patient_ref_category):
            w.writerow([row[0], row[1], f"{row[2]:.2f}", "" if not math.isfinite(row[3]) else f"{row[3]:.2f}",
                        row[4], row[5]])


def write_evaluation(p: Paired, result: dict, out: str | Path) -> list[Path]:
    """Write ``metrics.json``, ``metrics.md``, ``pairs.csv`` and the PNG plots into ``out`` (atomically, per file).

    Parameters
    ----------
    p : Paired
        The pairs ``result`` was computed from.
    result : dict
        :func:`evaluate`'s result (with any keys the caller added); NaN is written as JSON null.
    out : str or Path
        Output folder, created if missing.

    Returns
    -------
    list of Path
        The files written, in the order above; plots as in :func:`write_plots`.
    """
    from ctbmd.io import write_atomic

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = [write_atomic(out / "metrics.json", lambda t: t.write_text(json.dumps(_json_safe(result), indent=2))),
               write_atomic(out / "metrics.md", lambda t: t.write_text(markdown_table(result))),
               write_atomic(out / "pairs.csv", lambda t: _write_pairs_csv(p, t))]
    return written + write_plots(p, result, out)
