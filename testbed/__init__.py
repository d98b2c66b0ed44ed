"""Real parts for the tests and the benchmarks: DICOM studies written as scanners write them (``studies``), a bundle
with a tiny network (``bundles``), the deploy app run as its users run it (``app``), and a PACS (Orthanc) and the
DICOM node as processes (``pacs``).

Tests and benchmarks both import it; it imports neither. The deploy app and the node never import it: it is not
part of what they run.
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
