"""Every documented table is what its benchmark record gives (bench/tables.py)."""

from __future__ import annotations

import json
import shutil

from records import portable
from tables import DOCUMENTS, PROSE, RECORDS, ROOT, lookup, prose_mismatches, render, stale_blocks

MACHINE_FOLDERS = ("/work/", "/tmp/", "/home/", "/root/")


def test_documented_tables_match_their_records():
    assert stale_blocks() == []


def test_documented_prose_numbers_match_their_records():
    docs = {str(d.relative_to(ROOT)): len(PROSE.findall(d.read_text())) for d in DOCUMENTS}
    assert (
        docs["README.md"] > 0 and docs["bundle/docs/benchmarks.md"] > 0
    )  # the convention is in use where results are told
    assert prose_mismatches() == []


def test_a_prose_number_is_checked_at_its_printed_precision(tmp_path):
    (tmp_path / "r.json").write_text(
        json.dumps(
            {"rows": [{"method": "flow", "nfe": 10, "dice": 0.81949}, {"method": "ddpm", "nfe": 10, "dice": 0.5}]}
        )
    )
    assert lookup(json.loads((tmp_path / "r.json").read_text()), "rows[method=ddpm,nfe=10].dice") == 0.5
    doc = tmp_path / "doc.md"
    mark = "<!-- record: r.json rows[method=flow].dice -->"
    doc.write_text(f"Dice {mark}0.819, or {mark}0.82, or {mark}0.8195, and {mark}8.195e-01.\n")
    assert prose_mismatches([doc], tmp_path) == []
    doc.write_text(f"Dice {mark}0.818 and <!-- record: r.json rows[method=gan].dice -->0.9.\n")
    wrong = prose_mismatches([doc], tmp_path)
    assert len(wrong) == 2 and "(record: 0.81949)" in wrong[0] and "0 items match" in wrong[1]


def test_a_changed_record_makes_its_block_stale(tmp_path):
    records = tmp_path / "records"
    shutil.copytree(RECORDS, records)
    doc = tmp_path / "doc.md"
    doc.write_text(
        "text\n<!-- generated: generalisation (do not edit) -->\n"
        + render("generalisation", records)
        + "<!-- end generated -->\n"
    )
    assert stale_blocks([doc], records) == []
    record = json.loads((records / "generalisation.json").read_text())
    record["rows"][0]["metrics"]["mask_dice"] += 0.01
    (records / "generalisation.json").write_text(json.dumps(record))
    assert stale_blocks([doc], records) == ["doc.md: generalisation"]


def test_the_claims_verdicts_follow_each_metrics_direction():
    from tables import _claim

    def row(method, solver, steps, nfe, fd, dice, seconds):
        return {
            "method": method,
            "solver": solver,
            "num_steps": steps,
            "nfe": nfe,
            "fd_segmenter_features": fd,
            "mask_dice": dice,
            "seconds_per_sample": seconds,
        }

    rows = [row("flow", "euler", 10, 10, 0.1, 0.80, 1.0), row("ddpm", "ddpm", 1000, 1000, 0.2, 0.85, 40.0)]
    text = _claim(rows, 10, "ddpm", 1000, 1 / 50)
    assert "fd_segmenter_features 0.1 vs 0.2 (met)" in text  # lower is better
    assert "mask_dice 0.8 vs 0.85 (NOT MET)" in text  # higher is better
    assert "time 0.025 of DDPM's (NOT MET: at most 0.02)" in text
    assert "not in this record" in _claim(rows, 2, "ddim", 50, None)


def test_the_3d_goals_read_patch_distance_dice_and_the_interplane_ratio():
    from tables import _claim, _interplane_goal

    def row(method, solver, steps, fd, dice, interplane):
        return {
            "method": method,
            "solver": solver,
            "num_steps": steps,
            "nfe": steps,
            "fd_patches": fd,
            "mask_dice": dice,
            "interplane_ratio": interplane,
            "interplane_ratio_real": 1.0,
            "seconds_per_volume": steps / 10,
        }

    rows = [row("flow", "euler", 10, 2.0, 0.80, 1.2), row("ddpm", "ddpm", 1000, 2.5, 0.78, 1.5)]
    text = _claim(rows, 10, "ddpm", 1000, None, {"fd_patches": False, "mask_dice": True}, "seconds_per_volume")
    assert "fd_patches 2 vs 2.5 (met)" in text and "mask_dice 0.8 vs 0.78 (met)" in text
    assert "time 0.010 of DDPM's." in text  # no time goal in 3D: the ratio alone
    assert "1.20x the real volumes' (met: at most 1.3x)" in _interplane_goal(rows)
    rows[0]["interplane_ratio"] = 1.4
    assert "1.40x the real volumes' (NOT MET" in _interplane_goal(rows)
    assert "not in this record" in _interplane_goal(rows, nfe=2)


def test_the_training_table_reads_the_cards_history():
    from tables import training_table

    settings = {"lr": 2e-4, "lr_schedule": "cosine", "lr_warmup": 0, "lr_decay_start": 300, "max_epochs": 5}
    card = {
        "iterations": 500,
        "epochs": 5,
        "iterations_per_epoch": 100,
        "settings": settings,
        "settings_history": [{"until_iteration": 300, "lr_schedule": "constant", "lr_decay_start": 0}],
        "optimizer_restarted": [{"iteration": 200, "why": "lost"}],
        "data": {"files_sha256": "b" * 64},
        "data_history": [{"until_iteration": 200, "files_sha256": "a" * 64}],
        "validation_loss": [[100, 0.05], [200, 0.04], [300, 0.042], [400, 0.0401], [500, 0.04]],
    }
    still_falling = {**card, "validation_loss": [[400, 0.05], [500, 0.049]]}
    table = training_table({"models": {"flow": card, "ddpm": still_falling}})
    assert "| learning rate | 0.0002: constant; cosine from 300 to 0 at 500 |" in table
    assert "| optimizer restarted at | 200 | 200 |" in table
    assert "| training files (SHA-256) | aaaaaaaa to 200, bbbbbbbb |" in table
    assert "| lowest | 0.04 at 200 | 0.049 at 500 |" in table
    assert "| last two points | 0.0401 at 400 to 0.04 at 500 (flat) | 0.05 at 400 to 0.049 at 500 (not flat) |" in table


def test_records_and_docs_name_no_machine_folders():
    files = [*RECORDS.glob("*.json"), *DOCUMENTS]
    assert files and not [f.name for f in files if any(m in f.read_text() for m in MACHINE_FOLDERS)]
    assert not list(RECORDS.glob("*.md"))  # the records are JSON (+ PNG); their tables are the docs' blocks


def test_a_records_paths_are_made_repository_relative():
    command = (
        f"python bench/x.py --out_dir {ROOT}/bundle/docs/records --work_dir /scratch/me/runs/x_runs "
        "--ckpt /other/checkout/bundle/models/model.pt --out=/w/out/r.json --seeds (0,1) --note 1/2 of a/b"
    )
    assert portable(command) == (
        "python bench/x.py --out_dir bundle/docs/records --work_dir x_runs "
        "--ckpt bundle/models/model.pt --out=out/r.json --seeds (0,1) --note 1/2 of a/b"
    )


def test_tables_show_the_sharpness_columns_only_for_records_that_have_them():
    from tables import SHARPNESS, SHARPNESS_KEYS, generalisation_table

    record = json.loads((RECORDS / "generalisation.json").read_text())
    before = generalisation_table(record)
    assert "HF power ratio" not in before  # a record made before these metrics: its table as it was
    metrics = record["rows"][0]["metrics"]
    metrics.update(dict.fromkeys(SHARPNESS_KEYS, 0.5))
    metrics["ci95"]["hf_power_ratio"] = [0.25, 0.75]
    lines = generalisation_table(record).splitlines()
    header, separator, first, second = lines[:4]
    assert all(name in header for name, *_ in SHARPNESS) and separator.count("|") == header.count("|")
    assert "| 0.50 [0.25, 0.75] (0.50) |" in first and first.count("|") == header.count("|")
    assert second.endswith("| - (-) | - (-) | - (-) | - (-) | - | - (-) |")  # a row without them
