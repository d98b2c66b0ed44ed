"""bench/gpu_check.py at tiny sizes on the CPU (--smoke): every section's code runs, and what could fail is checked
(the loss falls, DDP matches one process, the deploy app runs); time boxes, failures and the deadline are isolated."""

import json
import subprocess
import sys
import time
from pathlib import Path

import gpu_check
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def smoke_record(tmp_path_factory, data_dir) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp("gpu_check")
    command = [sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--smoke", "--out_dir", str(out)]
    command += ["--data_dir", str(data_dir)]
    subprocess.run(command, check=True, timeout=600, capture_output=True)
    return json.loads((out / "gpu_check.json").read_text()), (out / "gpu_check.md").read_text()


def test_every_section_runs(smoke_record):
    record, table = smoke_record
    assert list(record["sections"]) == list(gpu_check.SECTIONS)
    for name, section in record["sections"].items():
        assert section["status"] == "ok", (name, section.get("error"), section.get("traceback"))
    assert record["smoke"] and record["device"] == "cpu" and record["total_s"] < record["deadline_s"]
    for title in ("2D mask + class network", "Sampling", "3D training memory", "DDP", "Training run", "Deploy app"):
        assert title in table


def test_network_2d_counts_flops_and_times_every_variant(smoke_record):
    result = smoke_record[0]["sections"]["network_2d"]["result"]
    flops = result["flops_per_image"]
    assert flops["training_step"] > 2 * flops["forward"] > 0  # the backward pass is counted too
    assert result["peak"]["measured_matmul_tflops"] > 0
    assert list(result["variants"]) == ["fp32", "bf16", "bf16 channels-last", "bf16 channels-last compile"]
    for row in result["variants"].values():
        assert row["forward_ms"] > 0 and row["step_ms"] > 0 and row["step_fraction_of_measured_peak"] > 0


def test_sampling_covers_nfe_batches_and_precisions(smoke_record):
    rows = smoke_record[0]["sections"]["sampling"]["result"]["rows"]
    sizes = gpu_check.Sizes.smoke()
    assert {(r["precision"], r["batch"], r["nfe"]) for r in rows} == {
        (p, b, n) for p in ("fp32", "bf16") for b in sizes.sample_batches for n in sizes.nfe
    }
    assert all(r["ms_per_image"] > 0 for r in rows)


def test_memory_3d_measures_beside_the_estimate(smoke_record):
    result = smoke_record[0]["sections"]["memory_3d"]["result"]
    sizes = gpu_check.Sizes.smoke()
    assert {(r["side"], r["checkpointing"]) for r in result["measured"]} == {
        (s, c) for s in sizes.sides_3d for c in (False, True)
    }
    assert all(r["fits"] and r["step_ms"] > 0 and r["estimate_gib"] > 0 for r in result["measured"])
    for largest in result["largest_bf16"].values():
        assert largest["side"] >= max(sizes.sides_3d) and largest["tried"]


def test_ddp_loss_matches_one_process(smoke_record):
    result = smoke_record[0]["sections"]["ddp"]["result"]
    assert result["world_size"] == 2 and result["backend"] == "gloo"
    assert len(result["losses"]) == gpu_check.Sizes.smoke().ddp_steps
    assert result["matches"] and result["max_relative_difference"] < result["tolerance"]


def test_training_loss_falls(smoke_record):
    result = smoke_record[0]["sections"]["training"]["result"]
    assert result["iterations"] == gpu_check.Sizes.smoke().train_iterations
    assert result["loss_falls"] and result["last_loss_mean"] < result["first_loss_mean"]


def test_deploy_latency_against_the_model(smoke_record):
    result = smoke_record[0]["sections"]["deploy"]["result"]
    assert result["slices"] == 20 and result["nfe"] == 10
    warm, model_only = result["end_to_end_warm_seconds"], result["model_only_seconds"]
    assert warm > 0 and model_only > 0  # which is larger is the benchmark's finding, and load moves it: no test here
    assert result["overhead_ratio"] == pytest.approx(warm / model_only, rel=0.01, abs=2e-3)


def test_a_failing_section_is_recorded_and_the_next_runs(tmp_path, monkeypatch):
    def broken(*_):
        raise RuntimeError("broken on purpose")

    monkeypatch.setattr(gpu_check, "sampling", broken)
    record = gpu_check.main(smoke=True, out_dir=str(tmp_path), sections="sampling,memory_3d", deadline=10**6)
    sections = record["sections"]
    assert sections["sampling"]["status"] == "error" and "broken on purpose" in sections["sampling"]["error"]
    assert sections["memory_3d"]["status"] == "ok"
    assert json.loads((tmp_path / "gpu_check.json").read_text())["sections"]["sampling"]["status"] == "error"
    assert "broken on purpose" in (tmp_path / "gpu_check.md").read_text()


def test_time_box_and_deadline(tmp_path):
    start = time.perf_counter()
    with pytest.raises(gpu_check.SectionTimeout), gpu_check.time_box(1):
        time.sleep(5)
    assert time.perf_counter() - start < 3
    record = gpu_check.main(smoke=True, out_dir=str(tmp_path), deadline=0)
    assert {s["status"] for s in record["sections"].values()} == {"skipped"}
