"""The documentation's tables, generated from the benchmark records in bundle/docs/records.

A document holds a generated block as

    <!-- generated: NAME (do not edit; python bench/tables.py) -->
    ...
    <!-- end generated -->

and ``python bench/tables.py`` rewrites every block from its record; ``--check`` only reports (exit 1) the blocks
that differ from what their record gives, as the test suite does. A number in the docs outside such a block
is a number no command wrote.

    python bench/tables.py            # rewrite the blocks
    python bench/tables.py --check    # exit 1 if any block disagrees with its record
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

import fire

ROOT = Path(__file__).resolve().parents[1]
RECORDS = ROOT / "bundle" / "docs" / "records"
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "bundle" / "docs").glob("*.md"))]
BLOCK = re.compile(r"(<!-- generated: (\S+) [^>]*-->\n)(.*?)(<!-- end generated -->)", re.S)


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
    model = record.get("model") or {}
    if model:
        lines += [
            "",
            f"Model: {model.get('iterations')} iterations ({model.get('epochs')} epochs), "
            f"{model.get('training_seconds')} s of training; {record['machine']}; "
            f"`{record['command']}`, {record['seconds']} s.",
        ]
    return "\n".join(lines) + "\n"


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


# block name -> (record file in RECORDS, formatter)
BLOCKS: dict[str, tuple[str, Callable[[dict], str]]] = {
    "generalisation": ("generalisation.json", generalisation_table),
    "model_card": ("generalisation.json", model_card_table),
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


def main(check: bool = False) -> None:
    """Rewrites every generated block from its record (``--check``: only report; exit 1 if any is stale)."""
    if check:
        stale = stale_blocks()
        print("\n".join(stale) or "every generated block matches its record")
        sys.exit(1 if stale else 0)
    for doc in DOCUMENTS:
        text = doc.read_text()
        new = BLOCK.sub(lambda m: m.group(1) + render(m.group(2)) + m.group(4), text)
        if new != text:
            doc.write_text(new)
            print(f"updated {doc.relative_to(ROOT)}")


if __name__ == "__main__":
    fire.Fire(main)
