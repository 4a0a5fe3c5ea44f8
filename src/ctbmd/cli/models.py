"""``ctbmd evaluate`` and ``ctbmd train``: compare predictions with references, train the DL BMD models."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.progress import Progress, SpinnerColumn, TextColumn

from ctbmd.cli.app import (Arch, Command, Device, Dims, Protocol, Task, app, err, one_line_errors)


@app.command(cls=Command)
def evaluate(
    pred: Path = typer.Option(..., "--pred", help="Folder of `ctbmd run` outputs (result.json each) or a CSV."),
    ref: Path = typer.Option(..., "--ref", help="Reference CSV: patient_id + level + bmd_mg_cm3 (QCT), "
                                                "or patient_id + t_score/category (DXA)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (metrics.json, metrics.md, PNGs)."),
    split: Optional[str] = typer.Option(None, "--split", help="Column naming each patient's data set "
                                                             "(train/validation/test/external)."),
    mapping: Optional[Path] = typer.Option(None, "--map", help="CSV with scan,patient_id: which result folder "
                                                               "belongs to which patient."),
    field_name: str = typer.Option("bmd_mg_cm3", "--field", help="Per-level value in result.json to evaluate "
                                                                 "(bmd_mg_cm3, or bmd_dl_mg_cm3 of a model)."),
    n_boot: int = typer.Option(1000, "--bootstrap", help="Bootstrap resamples for the 95% CIs (0: none)."),
    seed: int = typer.Option(0, "--seed", help="Bootstrap seed."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks of internal errors, and the debug log (what the readers printed)."),
) -> None:
    """Compare predictions with QCT or DXA references: agreement, diagnosis, ROC, with bootstrap CIs."""
    from ctbmd import evaluate as ev

    with one_line_errors(debug):
        if n_boot < 0:
            from ctbmd.errors import UsageError
            raise UsageError(f"--bootstrap must be >= 0, got {n_boot}")
        reference = ev.read_reference(ref, split_column=split)
        predictions = ev.read_predictions(pred, mapping=mapping, field_name=field_name, split_column=split)
        paired = ev.pair(predictions, reference)
        result = ev.evaluate(paired, n_boot=n_boot, seed=seed)
        result["prediction"] = {"path": str(pred), "field": field_name, "failed": [list(f) for f in predictions.failed]}
        result["reference"] = {"path": str(ref), "kind": reference.kind}
        written = ev.write_evaluation(paired, result, out)
    allm = result["splits"][ev.ALL_SPLITS]

    def figure(key: str, fmt: str) -> str:  # "0.912", or "not computed (needs at least 3 patients, got 1)"
        text = ev.figure_text(allm, key, fmt)
        return (f"not computed ({text.removeprefix('not computed: ')})" if text.startswith("not computed")
                else "n/a" if text == "–" else text)

    if reference.kind == "qct":
        loa = (f"{figure('patient.loa_low', '{:+.1f}')}..{figure('patient.loa_high', '{:+.1f}')}"
               if "patient.loa_low" not in allm["not_computed"] else figure("patient.loa_low", ""))
        typer.echo(f"patients: n {allm['patient']['n']:.0f}, r² {figure('patient.r2', '{:.3f}')}, "
                   f"MAE {figure('patient.mae', '{:.2f}')} mg/cm³, bias {figure('patient.bias', '{:+.2f}')}, "
                   f"LoA {loa}")
    typer.echo(f"diagnosis: accuracy {figure('diagnosis.accuracy', '{:.3f}')}, "
               f"AUC osteoporosis {figure('diagnosis.auc_osteoporosis', '{:.3f}')}")
    if "ci" in allm["not_computed"]:
        typer.echo(f"95% CIs: not computed ({allm['not_computed']['ci']})")
    if result["unmatched_reference"]:
        typer.echo(f"reference patients without a prediction: {len(result['unmatched_reference'])}")
    typer.echo("wrote " + ", ".join(p.name for p in written) + f" to {out}")


@app.command(cls=Command)
def train(
    ctx: typer.Context,
    manifest: Path = typer.Option(..., "--manifest", "-m", help="Cohort CSV: patient_id, ct, optionally labels "
                                                                "and split, and level + bmd_mg_cm3 (QCT) or "
                                                                "t_score (DXA)."),
    out: Path = typer.Option(..., "--out", "-o", help="Model folder to write."),
    arch: Arch = typer.Option("densenet121", "--arch", help="Backbone (MONAI DenseNet or ResNet)."),
    dims: Dims = typer.Option("3d", "--dims", help="Input: 3d the whole crop, 2d its mid-axial slice, 2.5d 5 axial "
                                                   "slices, sagittal the mid-sagittal slice, sagittal3 3 sagittal "
                                                   "slices."),
    folds: int = typer.Option(5, "--folds", help="Cross-validation folds, split by patient."),
    test_fraction: float = typer.Option(0.0, "--test-fraction", help="Patients held out as a test split "
                                                                     "(when the manifest marks none)."),
    epochs: int = typer.Option(60, "--epochs", help="Maximum epochs per fold."),
    patience: int = typer.Option(10, "--patience", help="Early stopping: epochs without a better validation loss."),
    batch_size: int = typer.Option(16, "--batch-size"),
    lr: float = typer.Option(1e-3, "--lr", help="AdamW learning rate."),
    classify: bool = typer.Option(False, "--classify", help="Add a 3-class (ACR or WHO) head."),
    task: Task = typer.Option("regression", "--task", help="binary: normal against low BMD (below 120 mg/cm³, "
                              "or T-score -1.0; see --threshold); categories: regression with the 3-class head, "
                              "as --classify."),
    threshold: Optional[float] = typer.Option(None, "--threshold", help="With --task binary: a reference below "
                                              "this is low BMD (default 120 mg/cm³ for QCT, -1.0 for a T-score; --protocol huang2025: "
                                              "osteoporosis, 80 mg/cm³ or -2.45)."),
    target: Optional[str] = typer.Option(None, "--target", help="Manifest column to train on: bmd_mg_cm3 or "
                                         "t_score (default: as the manifest gives), or another numeric per-patient "
                                         "column such as tbs."),
    muscle: bool = typer.Option(False, "--muscle", help="Also read an axial 160 mm crop of the paraspinal and psoas "
                                "muscle at each vertebra's level, with a second backbone (Huang 2025)."),
    augment: bool = typer.Option(True, "--augment/--no-augment", help="On-the-fly MONAI augmentation (rotation, "
                                 "shift, scale, noise, HU jitter); a protocol may turn it off (yasaka2020)."),
    augment_copies: int = typer.Option(0, "--augment-copies", help="Offline expansion (Yasaka 2020: 60): fixed "
                                       "augmented copies per training crop (rotation, parallel shift, noise)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the split, initialisation, augmentation and order."),
    device: Device = typer.Option("auto", "--device", help="Where to train (auto: CUDA when available)."),
    protocol: Optional[Protocol] = typer.Option(None, "--protocol", help="A seed study's protocol (architecture, "
                                                "input, task, augmentation, splits); options given beside it "
                                                "override its defaults."),
    cache: Optional[Path] = typer.Option(None, "--cache", help="Crop cache folder (default ~/.cache/ctbmd/crops)."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Do not read or write cached crops."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run in --out."),
    description: str = typer.Option("", "--description", help="Where the cohort came from (stored in the model)."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks of internal errors, and the debug log (what the readers printed)."),
) -> None:
    """Train a DL BMD model with patient-grouped k-fold cross-validation; write it with its out-of-fold report."""
    with one_line_errors(debug):
        from ctbmd.api import require_dl

        require_dl("ctbmd train")
        from ctbmd.model.cohort import default_cache_dir
        from ctbmd.model.workflow import train_cohort

        values = dict(arch=arch, dims=dims, folds=folds, test_fraction=test_fraction, epochs=epochs,
                      patience=patience, batch_size=batch_size, lr=lr, classify=classify, augment=augment,
                      seed=seed, device=device, target=target, task=task, threshold=threshold,
                      augment_copies=augment_copies, muscle=muscle)
        cfg = _train_config(ctx, values, protocol, manifest)
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), console=err, transient=True) as bar:
            task = bar.add_task("reading the manifest")

            def tick(kind: str, info: dict) -> None:
                if kind == "scan":
                    bar.update(task, description=f"crops: scan {info['done']}/{info['total']} ({info['patient_id']})")
                else:
                    bar.update(task, description=f"fold {info['member'] + 1}/{info['folds']} epoch "
                                                 f"{info['epoch']}/{info['epochs']}: train {info['train_loss']:.3f}, "
                                                 f"validation {info['stop_loss']:.3f} (best epoch {info['best_epoch']})")

            config = train_cohort(manifest, out, cfg, cache_dir=None if no_cache else (cache or default_cache_dir()),
                                  resume=resume, description=description, progress=tick)
    _print_training(config, out)




def _train_config(ctx: typer.Context, values: dict, protocol: str | None, manifest: Path):
    """The :class:`~ctbmd.model.train.TrainConfig` of ``ctbmd train``: the options, or a protocol's presets
    overridden by the options given on the command line; a protocol that refuses them is exit 3."""
    from ctbmd.model.train import TrainConfig

    if protocol is None:
        return TrainConfig(**values)
    from ctbmd.errors import InvalidInputError
    from ctbmd.model.protocols import resolve

    # typer ships its own click: compare the source by name
    given = {k: v for k, v in values.items() if getattr(ctx.get_parameter_source(k), "name", "") == "COMMANDLINE"}
    try:
        return TrainConfig(**{**resolve(protocol, given), "protocol": protocol,
                              **{k: v for k, v in values.items() if k in ("seed", "device") and k not in given}})
    except ValueError as exc:  # refused like a bad manifest: one line, exit 3, nothing written
        raise InvalidInputError(getattr(exc, "reason", str(exc)), manifest) from None


def _print_training(config: dict, out: Path) -> None:
    """The summary ``ctbmd train`` prints: the cohort, then the out-of-fold figures of each evaluation
    (:func:`ctbmd.model.evaluation.out_of_fold_lines`; a figure not computed says why)."""
    from ctbmd.model.evaluation import out_of_fold_lines

    t = config["training"]
    typer.echo(f"trained on {t['n_patients']} patients, {t['n_vertebrae']} vertebrae ({t['data']}); "
               f"{t['failed_scans']} scans failed (see failed.csv)")
    for line in out_of_fold_lines(config):
        typer.echo(line)
    typer.echo(f"model: {out}")
