"""Damaged copies of DICOM files, as disks, networks and faulty exporters make them: flipped bytes in the file meta
information or the data set, a value representation no reader knows, a header or pixel data cut short, a length
that lies, a damaged DICM marker. Every kind is drawn from a seeded generator, so the same seed gives the same bytes.

The files must be explicit VR little endian with a file meta header (as ``studies.write_mr_series`` writes them).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from pydicom.filereader import data_element_generator, read_preamble

LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
KNOWN_VRS = LONG_VRS | {vr.encode() for vr in "AE AS AT CS DA DS DT FL FD IS LO LT PN SH SL SS ST TM UI UL US".split()}
# the kinds that always make a file unreadable; "meta_flip" and "data_flip" may hit a value and go unnoticed
DETECTABLE = ("marker", "meta_vr", "meta_cut", "data_vr", "wrong_length", "pixels_cut")
KINDS = (*DETECTABLE, "meta_flip", "data_flip")


@dataclass(frozen=True)
class Element:
    """One top-level element of a file: where its header starts, its VR, and where its value starts and ends."""

    start: int
    vr: bytes
    value: int
    end: int

    @property
    def length_field(self) -> tuple[int, int]:
        """Offset and size of its length field."""
        return (self.start + 8, 4) if self.vr in LONG_VRS else (self.start + 6, 2)


def elements(data: bytes) -> tuple[list[Element], list[Element]]:
    """The top-level elements of the file meta and of the data set (explicit VR little endian)."""
    fp = io.BytesIO(data)
    read_preamble(fp, False)
    found = []
    for raw in data_element_generator(fp, is_implicit_VR=False, is_little_endian=True):
        header = 12 if raw.VR.encode() in LONG_VRS else 8
        start = raw.value_tell - header
        found.append(Element(start, data[start + 4 : start + 6], raw.value_tell, raw.value_tell + raw.length))
    meta = [e for e in found if data[e.start : e.start + 2] == b"\x02\x00"]
    return meta, [e for e in found if e not in meta]


def unknown_vr(rng: np.random.Generator) -> bytes:
    """Two bytes that are no value representation (e.g. 0x55 0xd5)."""
    while (vr := bytes(rng.integers(0, 256, 2, dtype=np.uint8))) in KNOWN_VRS:
        pass
    return vr


def damage(data: bytes, kind: str, rng: np.random.Generator) -> bytes:
    """A damaged copy of a DICOM file's bytes: ``kind`` is one of ``KINDS``."""
    meta, dataset = elements(data)
    out = bytearray(data)
    if kind == "marker":  # one bit of the DICM marker after the 128-byte preamble flipped
        offset = 128 + int(rng.integers(0, 4))
        out[offset] ^= 1 << int(rng.integers(0, 8))
    elif kind == "meta_vr":  # a meta element read with a value representation no reader knows
        element = meta[int(rng.integers(1, len(meta)))]
        out[element.start + 4 : element.start + 6] = unknown_vr(rng)
    elif kind == "data_vr":
        element = dataset[int(rng.integers(0, len(dataset) - 1))]
        out[element.start + 4 : element.start + 6] = unknown_vr(rng)
    elif kind == "meta_cut":  # a transfer cut inside the file meta information
        return data[: int(rng.integers(meta[0].start + 1, meta[-1].end))]
    elif kind == "pixels_cut":
        pixels = dataset[-1]
        return data[: int(rng.integers(pixels.value, pixels.end))]
    elif kind == "wrong_length":  # a length field that lies: past the end of the file
        offset, size = dataset[int(rng.integers(0, len(dataset) - 1))].length_field
        out[offset : offset + size] = (len(data) + int(rng.integers(2, 1000)) * 2).to_bytes(size, "little")
    elif kind in ("meta_flip", "data_flip"):  # a few random bits flipped
        region = meta if kind == "meta_flip" else dataset[:-1]  # not the pixels: a flipped pixel is no error
        lo, hi = region[0].start, region[-1].end
        for offset in rng.integers(lo, hi, int(rng.integers(1, 4))):
            out[offset] ^= 1 << int(rng.integers(0, 8))
    else:
        raise ValueError(f"unknown kind of damage {kind!r}; one of {KINDS}")
    return bytes(out)
