"""Every documented table is what its benchmark record gives (bench/tables.py)."""

from __future__ import annotations

import json
import shutil

from tables import RECORDS, render, stale_blocks


def test_documented_tables_match_their_records():
    assert stale_blocks() == []


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
