"""Raster images without imaging libraries: a PNG encoder and a 3x5 pixel font for labels.

The heads heat maps and the training loss curve both draw small labelled pictures; neither justifies
a dependency on Pillow or matplotlib, so this module holds the little they share. Images are
[H, W, 3] uint8 numpy arrays, drawn into in place.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

INK = (31, 35, 40)  # near-black: softer than pure black next to the pale heat-map colours


def png_bytes(rgb: np.ndarray) -> bytes:
    """[H, W, 3] uint8 -> PNG file bytes: 8-bit RGB, filter 0 on every row, one IDAT; every viewer reads it."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    height, width, _ = rgb.shape
    raw = np.concatenate([np.zeros((height, 1), dtype=np.uint8), rgb.reshape(height, width * 3)], axis=1)

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit, truecolour, no interlace
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw.tobytes(), 9)) + chunk(b"IEND", b"")


# 3x5 glyphs, one row of three bits per entry, top row first. Upper case only: draw_text upper-cases,
# which is legible at this size and halves the table. "+" is for exponent tick labels like 1E+06,
# "," for the heat map's caption.
GLYPHS = {
    "A": "010 101 111 101 101", "B": "110 101 110 101 110", "C": "011 100 100 100 011", "D": "110 101 101 101 110",
    "E": "111 100 110 100 111", "F": "111 100 110 100 100", "G": "011 100 101 101 011", "H": "101 101 111 101 101",
    "I": "111 010 010 010 111", "J": "001 001 001 101 010", "K": "101 101 110 101 101", "L": "100 100 100 100 111",
    "M": "101 111 111 101 101", "N": "110 101 101 101 101", "O": "010 101 101 101 010", "P": "110 101 110 100 100",
    "Q": "010 101 101 110 011", "R": "110 101 110 101 101", "S": "011 100 010 001 110", "T": "111 010 010 010 010",
    "U": "101 101 101 101 111", "V": "101 101 101 101 010", "W": "101 101 111 111 101", "X": "101 101 010 101 101",
    "Y": "101 101 010 010 010", "Z": "111 001 010 100 111",
    "0": "111 101 101 101 111", "1": "010 110 010 010 111", "2": "110 001 010 100 111", "3": "110 001 010 001 110",
    "4": "101 101 111 001 001", "5": "111 100 110 001 110", "6": "011 100 111 101 111", "7": "111 001 010 010 010",
    "8": "111 101 111 101 111", "9": "111 101 111 001 110",
    "-": "000 000 111 000 000", "+": "000 010 111 010 000", ",": "000 000 000 010 100", ".": "000 000 000 000 010",
    "/": "001 001 010 100 100", ":": "000 010 000 010 000", " ": "000 000 000 000 000", "_": "000 000 000 000 111",
    "(": "010 100 100 100 010", ")": "010 001 001 001 010",
}
# Each glyph as a boolean mask, built once rather than parsed per character drawn.
_MASKS = {char: np.array([[bit == "1" for bit in row] for row in rows.split()]) for char, rows in GLYPHS.items()}


def draw_text(image: np.ndarray, text: str, x: int, y: int, scale: int = 2, color=INK) -> int:
    """Draw `text` (upper-cased; unknown characters as spaces) with its top left at (x, y); returns the x
    after it. Pixels outside the image are dropped, so a label near an edge is cut rather than wrapped."""
    height, width = image.shape[:2]
    for char in text.upper():
        mask = np.kron(_MASKS.get(char, _MASKS[" "]), np.ones((scale, scale), dtype=bool))
        # Clip the glyph box to the image (negative slice starts would otherwise index from the far edge).
        y0, x0 = max(y, 0), max(x, 0)
        y1, x1 = min(y + mask.shape[0], height), min(x + mask.shape[1], width)
        if y0 < y1 and x0 < x1:
            image[y0:y1, x0:x1][mask[y0 - y:y1 - y, x0 - x:x1 - x]] = color
        x += 4 * scale
    return x


def text_width(text: str, scale: int = 2) -> int:
    """Inked width of `text`: each glyph is 3 cells plus a 1-cell gap, without the gap after the last."""
    return max(0, 4 * scale * len(text) - scale)
