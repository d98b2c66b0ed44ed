"""A benchmark's records: the machine it ran on, and its result printed and saved as JSON.

The benchmarks run as files (``python bench/NAME.py``) and import the bundle's ``scripts.*``, the deploy app's modules
and ``testbed``: importing this module, which each does first, puts ``bundle/``, ``deploy_app/`` and the repository
on ``sys.path`` (as ``monai.bundle run`` does for the bundle, and pytest's ``pythonpath`` for the tests).
"""

from __future__ import annotations

import json
import os
import platform
import re
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "bundle" / "configs"
sys.path[:0] = [p for p in (str(ROOT / "bundle"), str(ROOT / "deploy_app"), str(ROOT)) if p not in sys.path]


def machine() -> str:
    """The device (the GPU's name, else the CPU's), its cores and their load, torch's threads and version."""
    if torch.cuda.is_available():
        device = torch.cuda.get_device_name()
    else:
        cpuinfo = Path("/proc/cpuinfo")
        lines = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []
        names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
        device = names[0] if names else platform.processor() or platform.machine()
    return (
        f"{device}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}, "
        f"{torch.get_num_threads()} torch threads, torch {torch.__version__}"
    )


def cli_list(value) -> list[str]:
    """The items of a command-line list: "a,b", one value, or the tuple that fire makes of "1,2"."""
    items = value if isinstance(value, (tuple, list)) else str(value).split(",")
    return [str(v).strip() for v in items if str(v).strip()]


# an absolute path: a folder of the machine a benchmark ran on, which a record must not carry
_ABSOLUTE = re.compile(r"(?<![\w.:/-])/(?:[\w.+-]+/)*[\w.+-]+")
# the repository's top-level folders: an absolute path through one of them is read from there on
_TOP = ("bundle", "deploy_app", "pacs_node", "bench", "tests", "testbed")


def portable(text: str) -> str:
    """``text`` with every absolute path made machine-independent: a path in the repository (this checkout's, or
    another checkout's: the part from one of its top-level folders on) becomes repository-relative, any other path
    its last component, a file with its folder (places the user picks), e.g. ``--work_dir /scratch/runs/x --out_dir
    /a/b/bundle/docs --out /c/d/r.json`` -> ``--work_dir x --out_dir bundle/docs --out d/r.json``."""
    text = text.replace(f"{ROOT}/", "")

    def relative(match: re.Match) -> str:
        parts = match.group(0).strip("/").split("/")
        top = next((i for i, part in enumerate(parts) if part in _TOP), None)
        if top is not None:
            return "/".join(parts[top:])
        return "/".join(parts[-2:] if "." in parts[-1] else parts[-1:])

    return _ABSOLUTE.sub(relative, text)


def portable_record(value):
    """``value`` (a record or a part of one) with ``portable`` applied to every string in it."""
    if isinstance(value, str):
        return portable(value)
    if isinstance(value, dict):
        return {k: portable_record(v) for k, v in value.items()}
    if isinstance(value, list):
        return [portable_record(v) for v in value]
    return value


def run_info(benchmark: str) -> dict:
    """The head of a benchmark's record: its name, the command that ran it (paths repository-relative, see
    ``portable``), and the machine."""
    return {
        "benchmark": benchmark,
        "command": portable(f"python bench/{benchmark}.py " + " ".join(sys.argv[1:])),
        "machine": machine(),
    }


def save(result: dict, out: str) -> None:
    """Prints ``result`` and writes it as JSON to the file ``out`` (its folder made if missing), every path in it
    machine-independent (``portable``)."""
    text = json.dumps(portable_record(result), indent=1)
    print(text)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(text)


def publish(record: dict, out_dir: str | Path, formatter) -> str:
    """Saves ``record`` as ``<benchmark>.json`` in ``out_dir``; prints and returns its table, ``formatter(record)``
    (the docs' generated blocks are made from the JSON by ``bench/tables.py``)."""
    name = record["benchmark"]
    save(record, str(Path(out_dir) / f"{name}.json"))
    table = formatter(portable_record(record))
    print(table)
    return table


def split_subset(datalist: str, split: str, stride: int, out: Path) -> str:
    """A datalist at ``out`` whose ``split`` is every ``stride``-th case of that split of ``datalist``."""
    content = json.loads(Path(datalist).read_text())
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({split: content[split][::stride]}, indent=1))
    return str(out)


def test_subset(overrides: dict, case_stride: int, work: Path) -> dict:
    """``overrides`` with a datalist (written in ``work``) of every ``case_stride``-th case of the test split of the
    datalist they name (the bundle's default if none); unchanged for a stride of 1."""
    if case_stride <= 1:
        return dict(overrides)
    datalist = workflow(["inference.json"], **overrides).parser.get_parsed_content("datalist")
    return {**overrides, "datalist": split_subset(datalist, "test", case_stride, work / "test_subset.json")}


def one_batch(overrides: dict, ckpt_path: str) -> dict:
    """``overrides`` with a batch size that generates all the evaluated cases in one network batch."""
    cases = workflow(["inference.json", "evaluate.json"], ckpt_path=ckpt_path, **overrides)
    return {"batch_size": len(cases.parser.get_parsed_content("real_cases")), **overrides}


def resumable(folder: Path, key: dict, measure, *args) -> dict:
    """``measure(*args)``'s result, saved as ``folder/result.json`` beside ``key`` (what it depends on: settings,
    checkpoint digests) and the digest of the bundle's code: a rerun with the same ones reads it back instead of
    measuring again, so a long benchmark continues where it was interrupted, and measures again after a code change."""
    from scripts.provenance import code_version

    key = {**key, "scripts_sha256": code_version()["scripts_sha256"]}
    saved = folder / "result.json"
    if saved.is_file():
        content = json.loads(saved.read_text())
        if content.get("key") == key:
            print(f"reusing {saved}")
            return content["result"]
    result = measure(*args)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = saved.with_name(".result.json.tmp")
    tmp.write_text(json.dumps({"key": key, "result": result}, indent=1))
    tmp.replace(saved)
    return result


def workflow(configs: list[str], **overrides):
    """An initialised bundle workflow from config files under bundle/configs (later files override earlier)."""
    from monai.bundle import ConfigWorkflow

    wf = ConfigWorkflow(
        config_file=[str(CONFIGS / c) for c in configs], workflow_type=None, logging_file=False, **overrides
    )
    wf.initialize()
    return wf


def generator(method: str) -> tuple[list[str], dict]:
    """The configs and overrides that generate with ``method``: a "flow" model (``inference.json``), the "ddpm"
    baseline (+ ``inference_ddpm.json``) or a trivial baseline of ``baselines.json`` by its name."""
    if method == "flow":
        return ["inference.json"], {}
    if method == "ddpm":
        return ["inference.json", "inference_ddpm.json"], {}
    return ["inference.json", "baselines.json"], {"baseline": method}


def generate_and_evaluate(method: str, out: str, variant: str | None = None, **overrides) -> tuple[dict, object]:
    """Generates the evaluation split with ``method`` (see ``generator``) + ``evaluate.json`` into ``out``
    (``variant``: a file of configs/variants); returns (its metrics.json, the run workflow)."""
    configs, extra = generator(method)
    configs = [*configs, "evaluate.json"] + ([f"variants/{variant}.json"] if variant else [])
    wf = workflow(configs, output_dir=str(out), **extra, **overrides)
    wf.run()
    return json.loads((Path(out) / "metrics.json").read_text()), wf
