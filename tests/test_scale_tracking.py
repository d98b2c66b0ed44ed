"""Experiment tracking: MONAI's ``--tracking mlflow`` writes a run to a local store under output_dir, and TensorBoard
gets the same curves and the preview grids."""

from __future__ import annotations

from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import TINY_2D, run_bundle

EPOCHS, STEPS = 2, 2  # 8 slices, batch 4


def test_mlflow_and_tensorboard_record_loss_lr_throughput_and_previews(data_dir, small_datalist, tmp_path):
    import mlflow

    out = tmp_path / "train"
    run_bundle(
        ["train.json", "variants/mask_class_2d.json"],
        tracking="mlflow",
        experiment_name="scale_test",
        **TINY_2D,
        dataset_dir=str(data_dir),
        datalist=str(small_datalist),
        output_dir=str(out),
        batch_size=4,
        lr_warmup=4,
        **{"train#trainer#max_epochs": EPOCHS, "preview_interval": 1},
    )

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{out / 'mlruns.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("scale_test").experiment_id])
    assert run.info.status == "FINISHED"
    history = {name: client.get_metric_history(run.info.run_id, name) for name in run.data.metrics}
    assert len(history["train_loss"]) == len(history["lr_group_0"]) == EPOCHS * STEPS
    lrs = [m.value for m in sorted(history["lr_group_0"], key=lambda m: m.step)]
    assert lrs == pytest.approx([5e-5, 1e-4, 1.5e-4, 2e-4])  # the rate each step used: 2e-4 warmed up over 4
    assert len(history["images_per_second"]) == len(history["lr"]) == EPOCHS
    assert all(m.value > 0 for m in history["images_per_second"])
    assert run.data.params["max_epochs"] == str(EPOCHS)

    (events,) = (out / "tensorboard").iterdir()
    board = EventAccumulator(str(events), size_guidance={"images": 0}).Reload()
    assert {"train_loss", "images_per_second", "lr"} <= set(board.Tags()["scalars"])
    assert len(board.Scalars("train_loss")) == EPOCHS * STEPS and len(board.Scalars("images_per_second")) == EPOCHS
    assert len(board.Images("preview")) == EPOCHS
    assert len(list(Path(out / "previews").glob("epoch_*.png"))) == EPOCHS
