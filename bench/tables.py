"""The documentation's tables, generated from the benchmark records in bundle/docs/records.

A document holds a generated block as

    <!-- generated: NAME (do not edit; python bench/tables.py) -->
    ...
    <!-- end generated -->

and ``python bench/tables.py`` rewrites every block from its record. A number in prose names its record in front
of it:

    flow at 10 NFE has mask Dice <!-- record: sampling.json rows[method=flow,solver=euler,nfe=10].mask_dice -->0.819

(the key path: dict keys and list items, ``[3]`` by index or ``[k=v,...]`` the item whose keys have those values);
the number must be the record's value at its printed precision (``0.819`` is within 0.0005 of it). ``--check`` only
reports (exit 1) the blocks and prose numbers that differ from their records, as the test suite does.

    python bench/tables.py            # rewrite the blocks
    python bench/tables.py --check    # exit 1 if any block or prose number disagrees with its record
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

import fire

ROOT = Path(__file__).resolve().parents[1]
RECORDS = ROOT / "bundle" / "docs" / "records"
DOCUMENTS = [
    ROOT / "README.md",
    *sorted((ROOT / "bundle" / "docs").glob("*.md")),
    ROOT / "deploy_app" / "README.md",
    *sorted((ROOT / "deploy_app" / "docs").glob("*.md")),
    ROOT / "pacs_node" / "README.md",
]
BLOCK = re.compile(r"(<!-- generated: (\S+) [^>]*-->\n)(.*?)(<!-- end generated -->)", re.S)
# a prose number and the record it comes from: <!-- record: FILE KEY.PATH -->NUMBER
PROSE = re.compile(r"<!-- record: (\S+) (.+?) -->([-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?)")


def _value(metrics: dict, key: str, digits: int = 3) -> str:
    """A metric with its 95% interval, e.g. ``0.912 [0.905, 0.919]``; "-" when absent."""
    value = metrics.get(key)
    if value is None:
        return "-"
    if value == float("inf"):
        return "inf"
    text = f"{value:.{digits}f}"
    ci = metrics.get("ci95", {}).get(key)
    return f"{text} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci else text


# the sharpness, texture and contrast-diversity columns (bundle/scripts/evaluation.py): (header, key, the real images'
# value shown beside it in brackets or None, digits)
SHARPNESS = (
    ("HF power ratio (real halves)", "hf_power_ratio", "hf_power_ratio_halves_real", 2),
    ("gradient ratio (real halves)", "gradient_ratio", "gradient_ratio_halves_real", 2),
    (
        "log-spectral distance, halves (real halves)",
        "log_spectral_distance_halves_generated",
        "log_spectral_distance_halves_real",
        3,
    ),
    ("texture FD, halves (real halves)", "fd_texture_halves_generated", "fd_texture_halves_real", 2),
    ("texture KID", "kid_texture_features", None, 3),
    ("contrast spread (real subjects)", "contrast_spread", "contrast_spread_real", 3),
)
# every evaluation key of those columns, for the benchmarks that keep a record's metrics by name
SHARPNESS_KEYS = (
    *(
        f"{k}{s}"
        for k in ("hf_power_ratio", "gradient_ratio", "log_spectral_distance")
        for s in ("", "_halves_generated", "_halves_real")
    ),
    *("fd_texture_features", "kid_texture_features", "fd_texture_halves_generated", "fd_texture_halves_real"),
    *("contrast_spread", "contrast_spread_real", "contrast_spread_ratio"),
)


def _with_sharpness(lines: list[str], rows: list[dict]) -> list[str]:
    """A table's lines (header, separator, one line per metrics dict of ``rows``) with the ``SHARPNESS`` columns
    appended, when any row has them; unchanged for a record made before they were measured."""
    if not any(key in row for row in rows for _, key, _, _ in SHARPNESS):
        return lines
    cells = [
        "".join(
            f" {_value(m, key, d)}" + (f" ({_value(m, real, d)})" if real else "") + " |"
            for _, key, real, d in SHARPNESS
        )
        for m in rows
    ]
    header = lines[0] + "".join(f" {name} |" for name, *_ in SHARPNESS)
    return [header, lines[1] + "---|" * len(SHARPNESS), *(line + cell for line, cell in zip(lines[2:], cells))]


def generalisation_table(record: dict) -> str:
    """The generalisation benchmark's table (see bench/generalisation.py)."""
    lines = [
        "| data (largest displacement) | method | mask Dice (real images) | r in mask | feature FD, halves "
        "(real halves) | KID | conditional MS-SSIM | SSIM | PSNR | hist W1 | s / sample |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in record["rows"]:
        m = row["metrics"]
        lines.append(
            f"| {row['data']} ({row['max_displacement_mm']:g} mm) | {row['method']} "
            f"| {_value(m, 'mask_dice')} ({_value(m, 'mask_dice_real')}) | {_value(m, 'correlation_in_mask')} "
            f"| {_value(m, 'fd_halves_generated', 2)} ({_value(m, 'fd_halves_real', 2)}) "
            f"| {_value(m, 'kid_segmenter_features', 4)} | {_value(m, 'conditional_ms_ssim')} "
            f"| {_value(m, 'ssim_paired')} | {_value(m, 'psnr_paired', 2)} | {_value(m, 'hist_wasserstein', 4)} "
            f"| {_value(m, 'seconds_per_sample', 4)} |"
        )
    lines = _with_sharpness(lines, [row["metrics"] for row in record["rows"]])
    model = record.get("model") or {}
    if model:
        lines += [
            "",
            f"Model: {model.get('iterations')} iterations ({model.get('epochs')} epochs), "
            f"{model.get('training_seconds')} s of training; {record['machine']}; "
            f"`{record['command']}`, {record['seconds']} s.",
        ]
    return "\n".join(lines) + "\n"


def blur_ablation_table(record: dict) -> str:
    """The blur ablation's table (see bench/blur_ablation.py): each arm's change, what its training cost, and its
    samples' metrics at the record's setting, the sharpness columns beside the real images' values."""
    lines = [
        "| arm | change | training iterations (s) | mask Dice (real images) | feature FD | conditional MS-SSIM "
        "| SSIM | PSNR |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in record["rows"]:
        change = ", ".join(f"{k} {v}" for k, v in r.items() if k in CHANGES) or "-"
        cost = r.get("training") or {}
        lines.append(
            f"| {r['arm']} | {change} | {cost.get('iterations')} ({cost.get('training_seconds')}) "
            f"| {_value(r, 'mask_dice')} ({_value(r, 'mask_dice_real')}) | {_value(r, 'fd_segmenter_features')} "
            f"| {_value(r, 'conditional_ms_ssim')} | {_value(r, 'ssim_paired')} | {_value(r, 'psnr_paired', 2)} |"
        )
    lines = _with_sharpness(lines, record["rows"])
    setting = record["setting"]
    targets = ", ".join(f"{k} {v:.2f}" for k, v in record.get("targets", {}).items())
    lines += [
        "",
        f"Training targets' high-frequency power over the same slices without augmentation (mean): {targets}.",
        "",
        f"{setting['solver']} at {setting['nfe']} NFE, every {record['case_stride']}th test slice; "
        f"{record['machine']}; `{record['command']}`.",
    ]
    return "\n".join(lines) + "\n"


# the training settings an arm of the blur ablation changes, as its table names them
CHANGES = ("augment", "time_schedule", "mask_network", "init_ckpt", "unet#channels", "unet#num_res_blocks")


def downstream_table(record: dict) -> str:
    """The downstream benchmark's table (see bench/downstream.py): each task's score on the real test subjects per
    training set, with its interval over test cases and its spread over seeds."""
    seeds = len(record["seeds"])
    lines = [
        "| trained on | cases | segmenter Dice (real test) | classifier accuracy (real test) |",
        "|---|---|---|---|",
    ]
    for row in record["rows"]:
        m = row["metrics"]
        cells = [
            _value(m, key) + (f" ± {m['seed_std'][key]:.3f}" if seeds > 1 else "")
            for key in ("segmenter_dice", "classifier_accuracy")
        ]
        lines.append(f"| {row['trained_on']} | {row['cases']} | {' | '.join(cells)} |")
    s = record["settings"]
    lines += [
        "",
        f"{record['test_cases']} test cases; seeds {record['seeds']}"
        + (" (± their spread)" if seeds > 1 else "")
        + f"; segmenter {s['seg_iterations']}, classifier {s['cls_iterations']} iterations; flow Euler "
        f"{s['num_steps']} NFE; {record['machine']}; `{record['command']}`, {record['seconds']} s.",
    ]
    return "\n".join(lines) + "\n"


def deploy_latency_table(record: dict) -> str:
    """The deploy app against the model alone (see bench/deploy_latency.py)."""
    r = record
    return (
        "| end to end, cold | end to end, warm | model alone | overhead ratio (wall) | overhead ratio (CPU time) "
        "| start-up (imports) |\n|---|---|---|---|---|---|\n"
        f"| {r['end_to_end_cold_seconds']} s | {r['end_to_end_warm_seconds']} s | {r['model_only_seconds']} s "
        f"| {r['overhead_ratio']} | {r['overhead_ratio_cpu_time']} | {r['startup_seconds']} s |\n\n"
        f"{r['slices']} slices of {'x'.join(map(str, r['matrix']))} at {r['nfe']} NFE, medians of {r['repeats']} "
        f"runs; {r['model']}, {r['device']}, {r['torch_threads']} torch thread(s); {r['machine']}; "
        f"`{r['command']}`.\n"
    )


def pacs_burst_table(record: dict) -> str:
    """A burst of studies through Orthanc and the DICOM node (see bench/pacs_burst.py)."""
    r = record
    return (
        "| studies (instances) | total | per study | first result | app runs | failed |\n|---|---|---|---|---|---|\n"
        f"| {r['studies']} ({r['instances_sent']}) | {r['total_seconds']} s | {r['seconds_per_study']} s "
        f"| {r['first_result_seconds']} s | {r['app_runs']} | {r['failed']} |\n\n"
        f"Up to {r['batch_studies']} studies per app run, {r['slices']} planes per series; {r['model']}; "
        f"{r['machine']}; `{r['command']}`.\n"
    )


def fuzz_inputs_table(record: dict) -> str:
    """Damaged DICOM files beside an intact series, through the deploy app's input side (see bench/fuzz_inputs.py)."""
    r = record
    return (
        "| trials | damaged files | crashes | contained (named) | accepted (damage in a value) | unnamed "
        "| intact series lost |\n|---|---|---|---|---|---|---|\n"
        f"| {r['trials']} | {r['damaged_files']} | {r['crashes']} | {r['contained']} | {r['accepted']} "
        f"| {r['unnamed_rejected']} | {r['intact_series_lost']} |\n\n"
        f"{r['damaged_per_trial']} of {r['slices']} files damaged per trial, seed {r['seed']}; {r['machine']}; "
        f"`{r['command']}`.\n"
    )


def model_card_table(record: dict) -> str:
    """What the evaluated model file says of itself: its card's provenance, as its training wrote it."""
    p = record["model"]
    settings = p.get("settings", {})
    curve = p.get("validation_loss") or [[None, None]]
    rows = [
        ("file", Path(record["settings"]["ckpt_path"]).name),
        ("iterations (epochs)", f"{p.get('iterations')} ({p.get('epochs')})"),
        ("batch size, seed", f"{settings.get('batch_size')}, {settings.get('seed')}"),
        ("training time", f"{p.get('training_seconds')} s on {settings.get('device')}"),
        ("training cases", f"{p['data']['num_cases']} (files SHA-256 {p['data']['files_sha256'][:12]})"),
        ("last validation loss", f"{curve[-1][1]} at iteration {curve[-1][0]}"),
        ("code", ", ".join(str(c.get("git_commit")) for c in p.get("code_history", []))),
    ]
    return "| | |\n|---|---|\n" + "".join(f"| {k} | {v} |\n" for k, v in rows)


FLAT = 0.005  # a validation loss that changes less than this fraction between its last two points has flattened


def _phases(provenance: dict) -> list[dict]:
    """The settings of each stretch of a training whose settings changed on resume, first to last: the card's
    settings, and before each ``settings_history`` entry the values it records as replaced."""
    phases = [provenance.get("settings", {})]
    for entry in reversed(provenance.get("settings_history", [])):
        phases.insert(0, {**phases[0], **{k: v for k, v in entry.items() if k != "until_iteration"}})
    return phases


def _learning_rate(provenance: dict) -> str:
    """The learning rate over the training, stretch by stretch, e.g. ``0.0002 constant; cosine from 13110 to 0 at
    19320``."""
    parts = []
    for s in _phases(provenance):
        warmup = f"warmup {s['lr_warmup']}, " if s.get("lr_warmup") else ""
        if s.get("lr_schedule") == "cosine":
            start = max(s.get("lr_warmup") or 0, s.get("lr_decay_start") or 0)
            total = s["max_epochs"] * provenance["iterations_per_epoch"]
            part = f"{warmup}cosine from {start} to 0 at {total}"
        else:
            part = f"{warmup}{s.get('lr_schedule')}"
        if part not in parts:
            parts.append(part)
    return f"{provenance.get('settings', {}).get('lr'):g}: " + "; ".join(parts)


def training_table(record: dict) -> str:
    """How each model of a record (``models``: name -> card provenance) was trained: iterations, learning rate,
    optimizer restarts and data files over time, and its validation-loss curve (first, lowest, last, and the last
    change, which says whether it has flattened: less than ``FLAT``)."""
    models = record["models"]
    lines = ["| | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]

    def row(name: str, cell: Callable[[dict], str]) -> None:
        lines.append(f"| {name} | " + " | ".join(cell(p) for p in models.values()) + " |")

    def curve(p: dict) -> list:
        return p.get("validation_loss") or []

    def change(p: dict) -> str:
        c = curve(p)
        if len(c) < 2:
            return "-"
        flat = abs(c[-1][1] / c[-2][1] - 1) < FLAT
        return f"{c[-2][1]} at {c[-2][0]} to {c[-1][1]} at {c[-1][0]} ({'flat' if flat else 'not flat'})"

    row("iterations (epochs)", lambda p: f"{p.get('iterations')} ({p.get('epochs')})")
    row("learning rate", _learning_rate)
    row(
        "optimizer restarted at",
        lambda p: ", ".join(str(r["iteration"]) for r in p.get("optimizer_restarted", [])) or "never",
    )
    row(
        "training files (SHA-256)",
        lambda p: (
            "".join(f"{d['files_sha256'][:8]} to {d['until_iteration']}, " for d in p.get("data_history", []))
            + p["data"]["files_sha256"][:8]
        ),
    )
    row("validation loss, first", lambda p: f"{curve(p)[0][1]} at {curve(p)[0][0]}" if curve(p) else "-")
    row("lowest", lambda p: "{1} at {0}".format(*min(curve(p), key=lambda c: c[1])) if curve(p) else "-")
    row("last", lambda p: f"{curve(p)[-1][1]} at {curve(p)[-1][0]}" if curve(p) else "-")
    row("last two points", change)
    return "\n".join(lines) + f"\n\nFlat: less than {FLAT:.1%} change between the last two validation points.\n"


def ddpm_selection_table(record: dict) -> str:
    """The DDPM baseline's schedule choice on the validation subjects (see bench/ddpm_selection.py)."""
    s = record["settings"]
    lines = [
        "| noise schedule | prediction | feature FD | KID | mask Dice (real images) | hist W1 | conditional MS-SSIM |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in sorted(record["rows"], key=lambda r: r["metrics"][s["ranked_by"]]):
        m = row["metrics"]
        lines.append(
            f"| {row['noise_schedule']} | {row['prediction_type']} | {_value(m, 'fd_segmenter_features', 3)} "
            f"| {_value(m, 'kid_segmenter_features', 4)} | {_value(m, 'mask_dice')} ({_value(m, 'mask_dice_real')}) "
            f"| {_value(m, 'hist_wasserstein', 4)} | {_value(m, 'conditional_ms_ssim')} |"
        )
    chosen = record["chosen"]
    lines += [
        "",
        f"Chosen: {chosen['noise_schedule']}, {chosen['prediction_type']} (lowest {s['ranked_by']}). Each candidate "
        f"trained {record['iterations']} iterations ({s['epochs']} epochs) from scratch, sampled with "
        f"{s['solver'].upper()} {s['num_steps']} on every {s['case_stride']}th validation slice; {record['machine']}; "
        f"`{record['command']}`, {record['seconds']} s.",
    ]
    return "\n".join(lines) + "\n"


def denoising_table(record: dict) -> str:
    """The denoising benchmark's table (see bench/denoising.py): PSNR (dB) and SSIM per set, noise and level."""
    lines = [
        "| data (intensities) | noise | level | estimated | PSNR noisy | PSNR NL-means | PSNR flow "
        "| flow - NL-means (dB) | SSIM noisy | SSIM NL-means | SSIM flow |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in record["rows"]:
        lo, hi = record["sets"][r["data"]]["intensities"]
        ci = r["psnr_flow_minus_nl-means_ci95"]
        lines.append(
            f"| {r['data']} ({lo:.0f}-{hi:.0f}) | {r['noise']} | {r['level']:g} | {r['sigma_estimated']:.3f} "
            f"| {r['psnr_noisy']:.2f} | {r['psnr_nl-means']:.2f} | {r['psnr_flow']:.2f} "
            f"| {r['psnr_flow_minus_nl-means']:+.2f} [{ci[0]:+.2f}, {ci[1]:+.2f}] "
            f"| {r['ssim_noisy']:.3f} | {r['ssim_nl-means']:.3f} | {r['ssim_flow']:.3f} |"
        )
    s, sets, model = record["settings"], record["sets"], record["model"]
    first = next(iter(sets.values()))
    lines += [
        "",
        f"{first['num_cases']} slices of {first['num_series']} test subjects per set (every {s['slice_stride']}th), "
        "intensities on the model's grid; "
        f"other units: maximum {s['other_units']['max_intensity']:g}, gamma {s['other_units']['gamma']:g}, bias "
        f"+-{s['other_units']['bias']:g}; the model card's range {s['card_intensity_range'][0]:g}-"
        f"{s['card_intensity_range'][1]:g}. Flow: {s['solver']} {s['num_steps']} steps "
        f"({record['rows'][0]['flow_nfe']} NFE), model of {model['iterations']} iterations; {record['machine']}; "
        f"`{record['command']}`, {record['seconds']} s.",
    ]
    return "\n".join(lines) + "\n"


# the claim's goals: (flow's Euler NFE, the DDPM row's solver and NFE, the largest time ratio or None)
CLAIMS = ((10, "ddpm", 1000, 1 / 50), (2, "ddim", 50, None))
# the distribution metrics and mask Dice, with True where higher is better
CLAIM_METRICS = {
    "fd_segmenter_features": False,
    "kid_segmenter_features": False,
    "mmd": False,
    "hist_wasserstein": False,
    "mask_dice": True,
}


def _flow_euler(rows: list[dict], nfe: int) -> dict | None:
    """The row of flow with Euler at ``nfe`` NFE, if the record has it."""
    return next((r for r in rows if (r["method"], r["solver"], r["nfe"]) == ("flow", "euler", nfe)), None)


def _claim(
    rows: list[dict],
    nfe: int,
    solver: str,
    steps: int,
    time_ratio: float | None,
    metrics: dict[str, bool] = CLAIM_METRICS,
    seconds: str = "seconds_per_sample",
) -> str:
    """One goal of the claim, metric by metric (``metrics``: True where higher is better): is flow (Euler, ``nfe``)
    at least as good as DDPM (``solver``, ``steps``), and, with ``time_ratio``, at most that fraction of its
    ``seconds``?"""
    flow = _flow_euler(rows, nfe)
    ddpm = next((r for r in rows if (r["method"], r["solver"], r["num_steps"]) == ("ddpm", solver, steps)), None)
    if flow is None or ddpm is None:
        return f"Flow at {nfe} NFE against DDPM {solver} {steps}: not in this record."
    verdicts = []
    for key, higher in metrics.items():
        a, b = flow.get(key), ddpm.get(key)
        if a is not None and b is not None:
            met = a >= b if higher else a <= b
            verdicts.append(f"{key} {a:.3g} vs {b:.3g} ({'met' if met else 'NOT MET'})")
    ratio = flow[seconds] / ddpm[seconds]
    timing = f"time {ratio:.3f} of DDPM's" + (
        f" ({'met' if ratio <= time_ratio else 'NOT MET'}: at most {time_ratio:.2g})" if time_ratio else ""
    )
    return f"Flow (Euler, {nfe} NFE) against DDPM ({solver}, {steps} steps): " + "; ".join([*verdicts, timing]) + "."


def sampling_table(record: dict, methods: tuple[str, ...] = ("flow", "ddpm")) -> str:
    """The rows of ``methods`` at each sampler setting (see bench/sampling.py), then the claim's goals (``CLAIMS``),
    each metric met or not."""
    lines = [
        "| method | solver | NFE | feature FD | KID | MMD | mask Dice (real images) | hist W1 | conditional MS-SSIM "
        "| SSIM | PSNR | s / sample |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    shown = [r for r in record["rows"] if r["method"] in methods]
    for r in shown:
        lines.append(
            f"| {r['method']} | {r['solver']} | {r['nfe']} | {_value(r, 'fd_segmenter_features')} "
            f"| {_value(r, 'kid_segmenter_features', 4)} | {_value(r, 'mmd')} "
            f"| {_value(r, 'mask_dice')} ({_value(r, 'mask_dice_real')}) | {_value(r, 'hist_wasserstein', 4)} "
            f"| {_value(r, 'conditional_ms_ssim')} | {_value(r, 'ssim_paired')} | {_value(r, 'psnr_paired', 2)} "
            f"| {_value(r, 'seconds_per_sample', 4)} |"
        )
    lines = _with_sharpness(lines, shown)
    lines += [""] + [_claim(record["rows"], *goal) for goal in CLAIMS]
    lines += ["", f"{record['machine']}; `{record['command']}`."]
    return "\n".join(lines) + "\n"


# the 3D goals: flow at 10 Euler NFE against DDPM ancestral 1000 on these metrics; its inter-plane ratio at most
# INTERPLANE_GOAL times the real volumes'
VOLUMETRIC_METRICS = {"fd_patches": False, "mask_dice": True}
INTERPLANE_GOAL = 1.3


def _interplane_goal(rows: list[dict], nfe: int = 10) -> str:
    """The 3D consistency goal: flow's (Euler, ``nfe``) inter-plane ratio over the real volumes'."""
    flow = _flow_euler(rows, nfe)
    if flow is None or flow.get("interplane_ratio") is None:
        return f"Inter-plane ratio of flow at {nfe} NFE: not in this record."
    ratio = flow["interplane_ratio"] / flow["interplane_ratio_real"]
    met = "met" if ratio <= INTERPLANE_GOAL else "NOT MET"
    return (
        f"Inter-plane ratio of flow (Euler, {nfe} NFE): {ratio:.2f}x the real volumes' "
        f"({met}: at most {INTERPLANE_GOAL}x)."
    )


def volumetric_table(record: dict) -> str:
    """The 3D comparison (see bench/volumetric.py): flow at each NFE against DDPM ancestral and DDIM on the test
    subjects, each value the mean over seeds with the seeds' range in brackets; then the 3D goals, met or not."""
    lines = [
        "| method | solver | NFE | patch FD | mask Dice (real volumes) | MS-SSIM diversity (real volumes) "
        "| conditional MS-SSIM | inter-plane ratio (real volumes) | s / volume |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    rows = [{**r, "ci95": r["seed_range"]} for r in record["rows"]]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['solver']} | {r['nfe']} | {_value(r, 'fd_patches')} "
            f"| {_value(r, 'mask_dice')} ({_value(r, 'mask_dice_real')}) "
            f"| {_value(r, 'ms_ssim_diversity')} ({_value(r, 'ms_ssim_diversity_real')}) "
            f"| {_value(r, 'conditional_ms_ssim')} "
            f"| {_value(r, 'interplane_ratio', 2)} ({_value(r, 'interplane_ratio_real', 2)}) "
            f"| {_value(r, 'seconds_per_volume', 2)} |"
        )
    lines = _with_sharpness(lines, rows)
    lines += ["", _claim(record["rows"], 10, "ddpm", 1000, None, VOLUMETRIC_METRICS, "seconds_per_volume")]
    lines += ["", _interplane_goal(record["rows"])]
    s, models = record["settings"], record["models"]
    size = "x".join(str(n) for n in s["image_size"])
    trained = "; ".join(
        f"{name} {m.get('iterations')} iterations, {m.get('training_seconds')} s" for name, m in models.items()
    )
    lines += [
        "",
        f"{s['test_volumes']} test volumes of {size}, seeds {s['seeds']}. Patch FD: the 3D segmenter's features of "
        f"{s['patches_per_volume']} patches of {'x'.join(str(n) for n in s['patch_size'])} per volume, a seed's "
        f"generated test volumes against the {s['validation_volumes']} real validation volumes; the real test volumes "
        f"against the same give {record['fd_patches_real']:.3f} (the floor). Models: {trained}; {record['machine']}; "
        f"`{record['command']}`, {record['seconds']} s.",
    ]
    return "\n".join(lines) + "\n"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def scale_cpu_table(record: dict) -> str:
    """3D memory and time on the CPU (see ``bench/scale.py cpu``): measured training and sampling per cube side
    beside the estimate that ``bench/scale.py memory`` uses without a GPU."""
    lines = [
        "| side | training step s | training peak GiB | 10-NFE sampling s / volume | sampling peak GiB "
        "| estimate GiB (training) | estimate / measured |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in record["rows"]:
        measured = [r.get(k, "-") for k in ("train_seconds", "train_gib", "sample_seconds", "sample_gib")]
        cells = " | ".join(str(v) for v in [f"{r['side']}^3", *measured, r["estimated_gib"]])
        lines.append(f"| {cells} | {_ratio(r.get('estimate_over_measured'))} |")
    lines += [
        "",
        f"{record['variant']}, batch {record['batch']}, {record['precision']}; each measurement in a fresh process "
        f"(peak resident memory over the process's before the network existed); {record['machine']}; "
        f"`{record['command']}`, {record['seconds']} s.",
    ]
    return "\n".join(lines) + "\n"


def scale_throughput_table(record: dict) -> str:
    """Training and generation images per second of one process per variant (see ``bench/scale.py throughput``)."""
    lines = [
        "| variant | image size | batch | training images/s | generation images/s (10 NFE) | device |",
        "|---|---|---|---|---|---|",
    ]
    for r in record["rows"]:
        lines.append(
            f"| {r['variant']} | {'x'.join(map(str, r['image_size']))} | {r['batch_size']} | "
            f"{r['train_images_per_second']} | {r['generate_images_per_second']} | {r['device']} |"
        )
    lines += [
        "",
        f"Training: the second of two epochs of {record['iterations']} iterations, data loading and handlers "
        f"included; generation: the variant's test split ({', '.join(str(r['generated']) for r in record['rows'])} "
        f"cases), untrained weights; {record['machine']}; `{record['command']}`, {record['seconds']} s.",
    ]
    return "\n".join(lines) + "\n"


def few_step_table(record: dict) -> str:
    """The few-step frontier (see bench/few_step.py): every model and sampler setting, then the goal: each model at 1
    and 2 NFE against the base at 10 Euler NFE, within 10% on feature FD and mask Dice."""
    lines = [
        "| model | solver | NFE | feature FD | KID | mask Dice (real images) | hist W1 | SSIM | PSNR | s / sample |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in record["rows"]:
        lines.append(
            f"| {r['model']} | {r['solver']} | {r['nfe']} | {_value(r, 'fd_segmenter_features')} "
            f"| {_value(r, 'kid_segmenter_features', 4)} | {_value(r, 'mask_dice')} ({_value(r, 'mask_dice_real')}) "
            f"| {_value(r, 'hist_wasserstein', 4)} | {_value(r, 'ssim_paired')} | {_value(r, 'psnr_paired', 2)} "
            f"| {_value(r, 'seconds_per_sample', 4)} |"
        )
    lines = _with_sharpness(lines, record["rows"])
    goal = record["goal"]
    ref, within = goal["reference"], f"{100 * goal['tolerance']:g}%"
    lines += [
        "",
        f"Goal: within {within} of the {ref['model']} model at {ref['nfe']} {ref['solver']} NFE "
        f"(feature FD at most {1 + goal['tolerance']:g}x, mask Dice at least {1 - goal['tolerance']:g}x its value)"
        + ("" if goal["reference_found"] else "; the run has no reference row")
        + ":",
        "",
        "| model | solver | NFE | feature FD (x base) | mask Dice (x base) | goal met |",
        "|---|---|---|---|---|---|",
    ]
    for g in goal["rows"]:
        met = {True: "yes", False: "no", None: "-"}[g["met"]]
        lines.append(
            f"| {g['model']} | {g['solver']} | {g['nfe']} | {_value(g, 'fd_segmenter_features')} "
            f"({_ratio(g['fd_segmenter_features_ratio'])}) | {_value(g, 'mask_dice')} "
            f"({_ratio(g['mask_dice_ratio'])}) | {met} |"
        )
    tuned = "; ".join(
        f"{name} {f['iterations']} iterations, {f['training_seconds']} s" for name, f in record["finetunes"].items()
    )
    lines += ["", f"Fine-tunes of the base, {record['finetune_epochs']} epochs each: {tuned}."]
    lines += [f"Skipped: {name}: {why}." for name, why in record["skipped"].items()]
    stride = record["case_stride"]
    cases = "Every test case" if stride == 1 else f"Every {stride}th test case"
    lines += [f"{cases}; {record['machine']}; `{record['command']}`, {record['seconds']} s."]
    return "\n".join(lines) + "\n"


def guidance_table(record: dict) -> str:
    """The classifier-free guidance sweep (see bench/guidance.py)."""
    lines = [
        "| guidance scale | NFE | feature FD | KID | class accuracy (real images) | mask Dice (real images) "
        "| conditional MS-SSIM | hist W1 | s / sample |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in record["rows"]:
        m = row["metrics"]
        lines.append(
            f"| {row['guidance_scale']:g} | {m['nfe']} | {_value(m, 'fd_segmenter_features')} "
            f"| {_value(m, 'kid_segmenter_features', 4)} "
            f"| {_value(m, 'class_accuracy')} ({_value(m, 'class_accuracy_real')}) "
            f"| {_value(m, 'mask_dice')} ({_value(m, 'mask_dice_real')}) | {_value(m, 'conditional_ms_ssim')} "
            f"| {_value(m, 'hist_wasserstein', 4)} | {_value(m, 'seconds_per_sample', 4)} |"
        )
    lines = _with_sharpness(lines, [row["metrics"] for row in record["rows"]])
    s = record["settings"]
    lines += [
        "",
        f"{s['solver']} {s['num_steps']} steps; {record['machine']}; `{record['command']}`, {record['seconds']} s.",
    ]
    return "\n".join(lines) + "\n"


def interplane_table(record: dict) -> str:
    """Inter-plane consistency of stacked 2D planes with each noise option (see bench/interplane.py)."""
    lines = [
        "| noise | inter-plane ratio (real planes) | generated / real | feature FD | mask Dice (real images) "
        "| conditional MS-SSIM | s / sample |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in record["rows"]:
        m = row["metrics"]
        lines.append(
            f"| {row['noise']} | {_value(m, 'interplane_ratio', 2)} ({_value(m, 'interplane_ratio_real', 2)}) "
            f"| {row['generated_over_real']:.2f} | {_value(m, 'fd_segmenter_features')} "
            f"| {_value(m, 'mask_dice')} ({_value(m, 'mask_dice_real')}) | {_value(m, 'conditional_ms_ssim')} "
            f"| {_value(m, 'seconds_per_sample', 4)} |"
        )
    lines = _with_sharpness(lines, [row["metrics"] for row in record["rows"]])
    s, first = record["settings"], record["rows"][0]["metrics"]
    slices = "every slice" if s["case_stride"] == 1 else f"every {s['case_stride']}th slice"
    lines += [
        "",
        f"{first.get('interplane_volumes')} test subjects, {slices}; {s['solver']} "
        f"{s['num_steps']} steps ({first['nfe']} NFE); {record['machine']}; `{record['command']}`, "
        f"{record['seconds']} s.",
    ]
    return "\n".join(lines) + "\n"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def reference_compare_table(record: dict) -> str:
    """This project against the MOTFM reference code (see bench/reference_compare.py)."""
    rows, codes = record["rows"], list(record["rows"])
    measures = ("forward", "step", "bare_step", "sampling")
    lines = [
        "| seconds per image (wall / CPU) | " + " | ".join(codes) + " |",
        "|---|" + "---|" * len(codes),
    ]
    for m in measures:
        cells = [f"{rows[c][m]['median']:.4f} / {rows[c][m]['cpu_median']:.4f}" for c in codes]
        lines.append(f"| {m.replace('_', ' ')} | " + " | ".join(cells) + " |")
    pairs = list(dict.fromkeys(k for m in measures for k in record["ratios"].get(m, {})))
    if pairs:
        lines += ["", "| ratio: wall of medians [per round] (CPU) | " + " | ".join(pairs) + " |"]
        lines.append("|---|" + "---|" * len(pairs))
        for m in measures:
            cells = []
            for pair in pairs:
                r = record["ratios"][m].get(pair)
                rounds = ", ".join(f"{v:.2f}" for v in r["per_round"]) if r else ""
                cells.append(f"{r['of_medians']:.2f} [{rounds}] ({r['cpu_of_medians']:.2f})" if r else "-")
            lines.append(f"| {m.replace('_', ' ')} | " + " | ".join(cells) + " |")
    phases = record.get("trainer_phases_ms_per_image") or {}
    if phases:
        names = list(next(iter(phases.values())))
        lines += ["", "| this project's trainer, ms per image | " + " | ".join(names) + " |"]
        lines.append("|---|" + "---|" * len(names))
        lines += [f"| {c} | " + " | ".join(f"{v[n]:.1f}" for n in names) + " |" for c, v in phases.items()]
    s = record["settings"]
    load = record["load_average"]
    lines += [
        "",
        f"Batch {s['batch_size']}, {s['image_size'][0]}x{s['image_size'][1]}, {s['threads']} torch threads"
        + (f" (OMP_WAIT_POLICY={s['omp_wait_policy']})" if s.get("omp_wait_policy") else "")
        + ", "
        f"{s['rounds']} rounds of {s['steps']} steps, sampling at NFE {sorted(set(s['nfe'].values()))}; parameters "
        + ", ".join(f"{c} {n / 1e6:.2f} M" for c, n in record["parameters"].items())
        + f"; reference commit {(record.get('reference') or {}).get('commit')}; {record['machine']}; load average "
        f"{load['start'][0]} at the start, {load['end'][0]} at the end. {record.get('note', '')} "
        f"`{record['command']}`, {record['seconds']} s.",
    ]
    return "\n".join(lines) + "\n"


def gpu_check_table(record: dict) -> str:
    """The GPU check's tables, one per section with its status (see bench/gpu_check.py)."""
    sections = record["sections"]
    lines = [
        f"{record['machine']}; {record['gpus']} GPU(s), CUDA {record['cuda']}; start-up {record['startup_s']} s, "
        f"total {record.get('total_s')} s; `{record['command']}`",
    ]

    def section(name: str, title: str) -> dict:
        entry = sections.get(name)
        if entry is None:
            return {}
        error = f": {entry['error'][:200]}" if entry.get("error") else ""
        lines.extend(["", f"**{title}**: {entry['status']} in {entry.get('seconds')} s{error}", ""])
        return entry["result"]

    r = section("network_2d", "2D mask + class network")
    if r.get("variants"):
        peak = r["peak"]
        lines += [
            f"{r['parameters'] / 1e6:.2f} M parameters, {r['image_size'][0]}x{r['image_size'][1]}, batch {r['batch']}; "
            f"{r['flops_per_image']['training_step'] / 1e9:.1f} GFLOP per image per training step (counted); peak "
            f"bf16 {peak['measured_matmul_tflops']} TFLOP/s measured (matmul), {peak['spec_tflops'] or '-'} datasheet",
            "",
            "| variant | forward ms | step ms | training images/s | step TFLOP/s | of measured peak "
            "| of datasheet peak | first calls s | peak GiB |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {name} | {v['forward_ms']} | {v['step_ms']} | {v['training_images_per_s']} | {v['step_tflops']} "
            f"| {_percent(v.get('step_fraction_of_measured_peak'))} | {_percent(v.get('step_fraction_of_spec_peak'))} "
            f"| {v['first_calls_s']} | {v['peak_memory_gib'] or '-'} |"
            for name, v in r["variants"].items()
        ]
    r = section("sampling", "Sampling (Euler, the bundle's FlowSampler)")
    if r.get("rows"):
        lines += ["| precision | batch | NFE | ms per image |", "|---|---|---|---|"]
        lines += [f"| {x['precision']} | {x['batch']} | {x['nfe']} | {x['ms_per_image']} |" for x in r["rows"]]
    r = section("memory_3d", "3D training memory (mask_3d network, batch 1)")
    if r.get("measured"):
        lines += [
            "| side | checkpointing | step ms (fp32) | max allocated GiB | estimate GiB | estimate / allocated |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {x['side']}^3 | {'yes' if x['checkpointing'] else 'no'} | {x.get('step_ms', 'out of memory')} "
            f"| {x.get('allocated_gib') or '-'} | {x['estimate_gib']} | {x.get('estimate_over_allocated', '-')} |"
            for x in r["measured"]
        ]
        lines += [""] + [
            f"Largest cube in bf16 {key}: {v['side']}^3{' (the search cap)' if v.get('capped') else ''}"
            f"{' (the search stopped for time)' if v.get('stopped_for_time') else ''}."
            for key, v in r.get("largest_bf16", {}).items()
        ]
    r = section("ddp", "DDP (torchrun)")
    if r.get("losses"):
        lines.append(
            f"{r['world_size']} rank(s), {r['backend']}, global batch {r['global_batch']}: losses "
            f"{[round(v, 5) for v in r['losses']]}, one process {[round(v, 5) for v in r['single_process_losses']]}; "
            f"largest relative difference {r['max_relative_difference']:.2e} (tolerance {r['tolerance']}): "
            f"{'match' if r['matches'] else 'NO MATCH'}."
        )
    r = section("training", "Training run (train.json)")
    if r.get("losses"):
        lines.append(
            f"{r['iterations']} iterations, batch {r['batch_size']}, {r['image_size'][0]}x{r['image_size'][1]}, AMP "
            f"{r['amp']}, channels-last {r['channels_last']}: mean loss of the first sixth {r['first_loss_mean']}, of "
            f"the last {r['last_loss_mean']} ({'falls' if r['loss_falls'] else 'DOES NOT FALL'}); "
            f"{r['images_per_second']} images/s."
        )
    r = section("deploy", "Deploy app, 20-plane SEG study")
    if r.get("model_only_seconds"):
        lines.append(
            f"End to end {r['end_to_end_warm_seconds']} s warm ({r['end_to_end_cold_seconds']} s cold), the model "
            f"alone {r['model_only_seconds']} s: overhead ratio {r['overhead_ratio']} on {r['device']}."
        )
    return "\n".join(lines) + "\n"


# block name -> (record file in RECORDS, formatter)
BLOCKS: dict[str, tuple[str, Callable[[dict], str]]] = {
    "reference_compare": ("reference_compare.json", reference_compare_table),
    "reference_compare_1thread": ("reference_compare_1thread.json", reference_compare_table),
    "gpu_check": ("gpu_check.json", gpu_check_table),
    "generalisation": ("generalisation.json", generalisation_table),
    "downstream": ("downstream.json", downstream_table),
    "model_card": ("generalisation.json", model_card_table),
    "ddpm_selection": ("ddpm_selection.json", ddpm_selection_table),
    "denoising": ("denoising.json", denoising_table),
    "sampling": ("sampling.json", sampling_table),
    "sampling_linear_ddpm": ("sampling_linear_ddpm.json", partial(sampling_table, methods=("ddpm",))),
    "training": ("sampling.json", training_table),
    "guidance": ("guidance.json", guidance_table),
    "few_step": ("few_step.json", few_step_table),
    "interplane": ("interplane.json", interplane_table),
    "volumetric": ("volumetric.json", volumetric_table),
    "scale_cpu": ("scale_cpu.json", scale_cpu_table),
    "scale_throughput": ("scale_throughput.json", scale_throughput_table),
    "deploy_latency": ("deploy_latency.json", deploy_latency_table),
    "pacs_burst": ("pacs_burst.json", pacs_burst_table),
    "fuzz_inputs": ("fuzz_inputs.json", fuzz_inputs_table),
    "blur_ablation": ("blur_ablation.json", blur_ablation_table),
}


def render(name: str, records: Path = RECORDS) -> str:
    """The block ``name`` as its record (in ``records``) gives it."""
    if name not in BLOCKS:
        raise KeyError(f"unknown generated block '{name}' (known: {sorted(BLOCKS)})")
    file, formatter = BLOCKS[name]
    path = records / file
    if not path.is_file():
        raise FileNotFoundError(f"no record {path} for the generated block '{name}'")
    return formatter(json.loads(path.read_text()))


def stale_blocks(documents: list[Path] = DOCUMENTS, records: Path = RECORDS) -> list[str]:
    """'document: block' for every generated block that differs from its record."""
    stale = []
    for doc in documents:
        for match in BLOCK.finditer(doc.read_text()):
            if match.group(3) != render(match.group(2), records):
                stale.append(f"{doc.name}: {match.group(2)}")
    return stale


def lookup(record, path: str):
    """The value at ``path`` in ``record``: dot-separated keys, each optionally followed by ``[i]`` (a list's item
    by index) or ``[k=v,...]`` (the one item whose keys ``k`` print as ``v``); KeyError naming what is missing."""
    value = record
    for part in re.findall(r"[^.\[\]]+|\[[^\]]*\]", path):
        if not part.startswith("["):
            if not isinstance(value, dict) or part not in value:
                raise KeyError(f"no key '{part}' in {path}")
            value = value[part]
        elif "=" not in part:
            value = value[int(part[1:-1])]
        else:
            want = dict(item.split("=", 1) for item in part[1:-1].split(","))
            hits = [v for v in value if all(str(v.get(k)) == w for k, w in want.items())]
            if len(hits) != 1:
                raise KeyError(f"{len(hits)} items match {part} in {path}")
            value = hits[0]
    return value


def prose_mismatches(documents: list[Path] = DOCUMENTS, records: Path = RECORDS) -> list[str]:
    """'document: record key: printed (record: value)' for every prose number that is not its record's value at
    the printed precision, or whose record or key is missing."""
    wrong = []
    for doc in documents:
        for file, path, printed in PROSE.findall(doc.read_text()):
            where = f"{doc.name}: {file} {path}: {printed}"
            try:
                value = lookup(json.loads((records / file).read_text()), path)
            except (OSError, KeyError, IndexError, TypeError, ValueError) as e:
                wrong.append(f"{where} ({e})")
                continue
            mantissa = printed.lower().split("e")[0]
            decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
            scale = 10 ** int(printed.lower().split("e")[1]) if "e" in printed.lower() else 1
            if not isinstance(value, (int, float)) or abs(value - float(printed)) > 0.5 * 10**-decimals * scale * (
                1 + 1e-9
            ):
                wrong.append(f"{where} (record: {value})")
    return wrong


def main(check: bool = False) -> None:
    """Rewrites every generated block from its record (``--check``: only report; exit 1 if any block or prose
    number disagrees with its record)."""
    if check:
        stale = stale_blocks() + prose_mismatches()
        print("\n".join(stale) or "every generated block and prose number matches its record")
        sys.exit(1 if stale else 0)
    for doc in DOCUMENTS:
        text = doc.read_text()
        new = BLOCK.sub(lambda m: m.group(1) + render(m.group(2)) + m.group(4), text)
        if new != text:
            doc.write_text(new)
            print(f"updated {doc.relative_to(ROOT)}")


if __name__ == "__main__":
    fire.Fire(main)
