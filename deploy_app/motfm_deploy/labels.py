"""Which model label a DICOM SEG segment stands for, from a JSON label map (default: ``label_map.json``)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

DEFAULT_LABEL_MAP = Path(__file__).resolve().parents[1] / "label_map.json"


def normalise(text: str) -> str:
    """Segment labels compare case-insensitively, with '_' and '-' read as spaces."""
    return " ".join(re.sub(r"[_\-]", " ", text).lower().split())


@dataclass(frozen=True)
class LabelMap:
    """Segment -> model label, by segmented property type code, else by segment label.

    Attributes:
        codes: (coding scheme designator, code value) -> label.
        names: normalised segment label -> label.
        source: the file it was read from.
    """

    codes: dict[tuple[str, str], int]
    names: dict[str, int]
    source: str

    @classmethod
    def read(cls, path: str | Path = DEFAULT_LABEL_MAP) -> LabelMap:
        """Reads a label map file; a missing or malformed file is an error naming it."""
        path = Path(path)
        try:
            entries = json.loads(path.read_text())["labels"]
            codes, names = {}, {}
            for entry in entries:
                label = entry["label"]
                if not isinstance(label, int) or label < 1:
                    raise ValueError(f"label {label!r} is not a positive integer")
                codes.update({(c["scheme"], str(c["value"])): label for c in entry.get("codes", [])})
                names.update({normalise(n): label for n in entry.get("segment_labels", [])})
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"label map {path} cannot be used: {type(e).__name__}: {e}") from e
        return cls(codes, names, str(path))

    def label_of(self, scheme: str, value: str, segment_label: str) -> int | None:
        """The model label of a segment with this property type code and segment label; None if unmapped."""
        return self.codes.get((scheme, str(value)), self.names.get(normalise(segment_label)))
