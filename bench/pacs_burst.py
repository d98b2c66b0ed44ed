"""A burst through the DICOM node: STUDIES studies sent at once by a real PACS (Orthanc, one store job), processed by
the deploy app and sent back into their studies; total seconds until the last new series is whole in the PACS.

    python bench/pacs_burst.py [--studies 20] [--batch_studies 8] [--slices 3] [--out results/pacs_burst.json]

Half the studies hold a DICOM SEG (synthesis), half only their MR series (denoising); each MR series has SLICES
planes of 32 x 32. The model is the tests' tiny bundle (the real network structure, 32 x 32, 2 Euler steps) on the
CPU: the time is the node's and the app's (start-up, DICOM in and out, network), not the model's. Needs Orthanc
(Debian: apt-get install orthanc).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import fire
from records import ROOT, run_info, save


def main(studies: int = 20, batch_studies: int = 8, slices: int = 3, out: str = "results/pacs_burst.json") -> None:
    """Runs one burst; prints and saves its timings."""
    from scripts.synthetic_subjects import build
    from testbed.bundles import make_bundle, tiny_deploy
    from testbed.pacs import Node, Orthanc, burst
    from testbed.studies import load_volumes, write_study

    work = Path(tempfile.mkdtemp(prefix="pacs_burst-"))
    pacs = node = None
    try:
        data = ROOT / "bundle" / "data"
        if not (data / "datalist_3d.json").is_file():
            data = Path(build(str(work / "data")))
        volumes = load_volumes(data)
        make_bundle(work / "models" / "motfm", tiny_deploy())
        pacs = Orthanc(work / "orthanc")
        node = Node(work / "node", work / "models", pacs.port, "MOTFM", batch_studies=batch_studies).start()
        pacs.add_modality("motfm", node.ae_title, node.port)
        sent = [write_study(work / f"study{k}", volumes, seg=k % 2 == 0, slices=slices) for k in range(studies)]
        for study in sent:
            pacs.upload(study)
        result = run_info("pacs_burst") | burst(pacs, node, "motfm", sent, timeout=3600)
        failed = node.status()["failed"]
        result |= {
            "failed": len(failed),
            "batch_studies": batch_studies,
            "quiet_seconds": 2,
            "slices": slices,
            "model": "tiny test bundle (32 x 32, 2 Euler steps), CPU, 1 torch thread",
        }
    finally:
        if node is not None:
            node.stop()
        if pacs is not None:
            pacs.stop()
        shutil.rmtree(work, ignore_errors=True)
    save(result, out)


if __name__ == "__main__":
    fire.Fire(main)
