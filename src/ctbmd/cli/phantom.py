"""``ctbmd simulate``: a known-truth digital phantom."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ctbmd.cli.app import (Command, Fov, PhantomKvp, Phase, RibPairs, Sacrum, TissueModel, Transition,
                           app, one_line_errors)


@app.command(cls=Command)
def simulate(
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (ct.nii.gz or ct/, labels.nii.gz, truth.json)."),
    bmd: str = typer.Option("", "--bmd", help="Per-level K2HPO4 mg/cm³, e.g. L1=95,L2=100; others follow their mean."),
    kvp: PhantomKvp = typer.Option(120, "--kvp", help="Tube voltage (kV)."),
    noise: float = typer.Option(10.0, "--noise", help="Noise SD (HU)."),
    slice_mm: float = typer.Option(2.0, "--slice", help="Slice thickness = spacing (mm)."),
    pixel_mm: float = typer.Option(1.0, "--pixel", help="In-plane pixel size (mm)."),
    psf_mm: float = typer.Option(1.0, "--psf", help="In-plane PSF FWHM (mm)."),
    marrow_fat: float = typer.Option(0.4, "--marrow-fat", help="Marrow fat volume fraction (0-0.95)."),
    body_width: Optional[float] = typer.Option(None, "--body-width", help="Torso width (mm); seeded 280-400 if not given."),
    phase: Phase = typer.Option("native", "--phase", help="Contrast phase."),
    rotation: float = typer.Option(0.0, "--rotation", help="Patient rotation about z (degrees)."),
    no_t12_ribs: bool = typer.Option(False, "--no-t12-ribs", help="Drop the ribs of T12 (= --rib-pairs 11)."),
    l6: bool = typer.Option(False, "--l6", help="A sixth lumbar vertebra (= --transition lumbarised_s1)."),
    metal_level: Optional[str] = typer.Option(None, "--metal-level", help="Level with titanium pedicle screws."),
    tissue_spread: float = typer.Option(0.005, "--tissue-spread", help="With --tissue-model icru44: SD of "
                                                                         "fat/muscle density (fraction)."),
    tissue_model: TissueModel = typer.Option("realistic", "--tissue-model", help="realistic: fat, muscle and "
                                             "blood drawn from published ranges; icru44: ICRU 44 tissues."),
    energy_offset: Optional[float] = typer.Option(None, "--energy-offset", help="Scanner offset (keV) from the "
                                                                                "spectrum model; drawn if not given."),
    rods: Optional[str] = typer.Option(None, "--rods", help="Add a calibration phantom under the patient: rod "
                                                            "spec as for `ctbmd run --rods`, or 'default'."),
    fov: Fov = typer.Option("abdomen", "--fov", help="abdomen: T10-L5 and the sacrum; chest: C6-L2 with the rib "
                                                      "cage, shoulders, lungs, heart and aortic arch."),
    rib_pairs: RibPairs = typer.Option(12, "--rib-pairs", help="11: none on T12; 13: a T13 (VerSe 28) with short "
                                                               "floating ribs."),
    transition: Transition = typer.Option("none", "--transition", help="lumbarised_s1: an L6; sacralised_l5: L5 "
                                                                       "fused with the sacrum. Abdomen only."),
    sacrum: Optional[Sacrum] = typer.Option(None, "--sacrum", help="segmented (default): fused S1-S5, disc "
                                            "remnants, canal, alae, SI joints; simple: a block."),
    stent: bool = typer.Option(False, "--stent", help="Aortic stent graft: distal arch and descending aorta "
                                                      "(chest) or infrarenal aorta (abdomen)."),
    t12_rib_length: Optional[float] = typer.Option(None, "--t12-rib-length", help="Hypoplastic T12 ribs: "
                                                                                  "bony length in mm, e.g. 25."),
    fracture: Optional[str] = typer.Option(None, "--fracture", help="Vertebral compression fractures, "
                                           "LEVEL=KIND:LOSS comma-separated, e.g. L1=wedge:0.3 (kind wedge, "
                                           "biconcave or crush; loss 0.05-0.8 of the height). Recorded in "
                                           "truth.json."),
    dicom: bool = typer.Option(False, "--dicom", help="Write a DICOM series instead of NIfTI."),
    seed: int = typer.Option(0, "--seed", help="Random seed (anatomy, BMD factors, noise)."),
) -> None:
    """Write a known-truth digital phantom of the thoracolumbar spine (or chest) and its truth."""
    from ctbmd.simulate import PhantomSpec, parse_bmd, parse_fractures, simulate_phantom, write_phantom

    with one_line_errors():
        spec = PhantomSpec(bmd_mg_cm3=parse_bmd(bmd), kvp=kvp, noise_hu=noise, slice_thickness_mm=slice_mm,
                           pixel_mm=pixel_mm, psf_fwhm_mm=psf_mm, marrow_fat_fraction=marrow_fat,
                           body_width_mm=body_width, phase=phase, rotation_deg=rotation, t12_ribs=not no_t12_ribs,
                           l6=l6, metal_level=metal_level, tissue_spread=tissue_spread, seed=seed, fov=fov,
                           rib_pairs=rib_pairs, transition=transition, sacrum=sacrum, stent=stent,
                           t12_rib_length_mm=t12_rib_length, tissue_model=tissue_model,
                           energy_offset_kev=energy_offset, fractures=parse_fractures(fracture) if fracture else {})
        phantom = simulate_phantom(spec)
        if rods is not None:
            from ctbmd.calibrate.rods import parse_rod_spec
            from ctbmd.simulate.rods import add_rod_phantom

            phantom = add_rod_phantom(phantom, None if rods == "default" else parse_rod_spec(rods))
        paths = write_phantom(phantom, out, dicom=dicom)
    truth = phantom.truth
    v = truth["variant"]
    typer.echo(f"anatomy: {v['fov']}, {v['rib_pairs']} rib pairs (lowest on {v['rib_levels'][-1]}), "
               f"transition {v['transition']}" + (f" ({v['sacralised_sides']})" if v["sacralised_sides"] else "")
               + (", stent graft" if v["stent"] else "")
               + (f", T12 ribs {v['t12_rib_length_mm']:g} mm" if v["t12_rib_length_mm"] is not None else ""))
    levels = ", ".join(f"{lv['level']} {lv['bmd_mg_cm3']:.0f}/{lv['qct_equivalent_mg_cm3']:.0f}" for lv in truth["levels"])
    typer.echo(f"levels (K2HPO4 set / QCT-equivalent, mg/cm³): {levels}")
    typer.echo(f"effective energy {truth['scan']['effective_energy_kev']:.1f} keV; "
               f"patient (L1+L2): {truth['patient'].get('qct_equivalent_mg_cm3', float('nan')):.1f} mg/cm³ "
               f"QCT-equivalent, {truth['patient'].get('category')}")
    typer.echo("wrote " + ", ".join(str(p) for p in paths.values()))


