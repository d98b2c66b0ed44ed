"""bench/reference_compare.py without the reference (which needs its own dependencies): this project's side at a tiny
size, its record and its documentation table."""

import pytest
import reference_compare
from tables import reference_compare_table

TINY = '{"unet#channels": [8, 16, 16], "unet#num_head_channels": 8, "unet#norm_num_groups": 4}'


def test_this_project_alone(data_dir, tmp_path):
    record = reference_compare.main(
        options="fp32,bf16",
        rounds=2,
        steps=2,
        cases=16,
        network=TINY,
        datalist=str(data_dir / "datalist_2d.json"),
        dataset_dir=str(data_dir),
        out=str(tmp_path / "record.json"),
    )
    assert (tmp_path / "record.json").is_file() and record["reference"] is None and record["ratios"] == {}
    assert set(record["rows"]) == {"ours fp32", "ours bf16"}
    for row in record["rows"].values():
        for measure in reference_compare.MEASURES:
            assert len(row[measure]["wall"]) == 2 and row[measure]["median"] > 0 and row[measure]["cpu_median"] > 0
    assert record["settings"]["nfe"] == {"ours fp32": 10, "ours bf16": 10}
    phases = record["trainer_phases_ms_per_image"]["ours fp32"]
    assert set(phases) == set(reference_compare.PHASES) and phases["backward"] > 0
    table = reference_compare_table(record)
    assert "ours bf16" in table and "sampling" in table and "backward" in table


def test_unknown_options_are_refused():
    with pytest.raises(ValueError, match="unknown option"):
        reference_compare.main(options="fp64")
