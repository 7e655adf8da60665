"""A loss-curve PNG without matplotlib: a tiny line-plot rasteriser and a PNG writer (zlib + struct).

matplotlib is not a dependency of clozelm, and a training curve needs very little: axes, a few ticks
with numbers, two polylines and a legend. Text uses a built-in 3x5 pixel font drawn at 2x.
"""

from __future__ import annotations

import math
import struct
import zlib
from pathlib import Path

from ..weights.tensors import _temp_beside

# 3x5 glyphs, rows top to bottom, "1" = ink.
_FONT = {
    "0": "111101101101111", "1": "010110010010111", "2": "111001111100111", "3": "111001111001111",
    "4": "101101111001001", "5": "111100111001111", "6": "111100111101111", "7": "111001001001001",
    "8": "111101111101111", "9": "111101111001111", ".": "000000000000010", "-": "000000111000000",
    " ": "000000000000000", "A": "010101111101101", "D": "110101101101110", "E": "111100110100111",
    "I": "111010010010111", "K": "101101110101101", "L": "100100100100111", "N": "101111111101101",
    "O": "010101101101010", "P": "110101110100100", "R": "110101110101101", "S": "011100010001110",
    "T": "111010010010010", "V": "101101101101010", "M": "101111111101101", "e": "000111110100111",
}

BLACK, GREY, WHITE = (0, 0, 0), (225, 225, 225), (255, 255, 255)
TRAIN_RAW, TRAIN, VALID = (170, 200, 235), (31, 100, 180), (230, 120, 20)


class Canvas:
    def __init__(self, width: int, height: int):
        self.width, self.height = width, height
        self.pixels = bytearray(WHITE * (width * height))

    def dot(self, x: int, y: int, color, size: int = 1) -> None:
        for dy in range(size):
            for dx in range(size):
                px, py = x + dx, y + dy
                if 0 <= px < self.width and 0 <= py < self.height:
                    i = 3 * (py * self.width + px)
                    self.pixels[i:i + 3] = bytes(color)

    def line(self, x0: float, y0: float, x1: float, y1: float, color, size: int = 1) -> None:
        # Sample the segment at one-pixel steps: simpler than Bresenham and just as good at this size.
        n = max(1, int(max(abs(x1 - x0), abs(y1 - y0))))
        for k in range(n + 1):
            t = k / n
            self.dot(round(x0 + (x1 - x0) * t), round(y0 + (y1 - y0) * t), color, size)

    def text(self, x: int, y: int, s: str, color=BLACK, scale: int = 2) -> None:
        for ch in s:
            glyph = _FONT.get(ch, _FONT[" "])
            for r in range(5):
                for c in range(3):
                    if glyph[3 * r + c] == "1":
                        self.dot(x + c * scale, y + r * scale, color, scale)
            x += 4 * scale

    def png(self) -> bytes:
        rows = b"".join(b"\x00" + bytes(self.pixels[3 * y * self.width: 3 * (y + 1) * self.width])
                        for y in range(self.height))

        def chunk(kind: bytes, data: bytes) -> bytes:
            return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

        header = struct.pack(">IIBBBBB", self.width, self.height, 8, 2, 0, 0, 0)  # 8-bit RGB
        return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows, 6)) + chunk(b"IEND", b"")


def text_width(s: str, scale: int = 2) -> int:
    return 4 * scale * len(s) - scale


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [first + k * step for k in range(int((hi - first) / step + 1e-9) + 1)]


def _label(v: float, step: float) -> str:
    if abs(v) >= 10000 and float(v).is_integer():
        return f"{v / 1000:g}K"
    decimals = max(0, -math.floor(math.log10(step))) if step < 1 else 0
    return f"{v:.{decimals}f}"


def smooth(values: list[float], radius: int) -> list[float]:
    """Centred moving average (shrinking at the ends): unlike an EMA it does not lag behind the curve."""
    prefix = [0.0]
    for v in values:
        prefix.append(prefix[-1] + v)
    out = []
    for i in range(len(values)):
        lo, hi = max(0, i - radius), min(len(values), i + radius + 1)
        out.append((prefix[hi] - prefix[lo]) / (hi - lo))
    return out


def loss_curve_png(train: list[tuple[int, float]], valid: list[tuple[int, float]],
                   width: int = 800, height: int = 480) -> bytes:
    """Training loss (raw, light; smoothed, dark) and held-out loss (orange, with markers) against step."""
    train = [(s, v) for s, v in train if math.isfinite(v)]
    valid = [(s, v) for s, v in valid if math.isfinite(v)]
    canvas = Canvas(width, height)
    left, right, top, bottom = 70, width - 20, 30, height - 45
    points = train + valid
    if not points:
        canvas.text(left, top, "NO DATA")
        return canvas.png()
    x_lo, x_hi = 0, max(s for s, _ in points)
    y_lo, y_hi = min(v for _, v in points), max(v for _, v in points)
    pad = 0.05 * (y_hi - y_lo or 1.0)
    y_lo, y_hi = y_lo - pad, y_hi + pad
    x_hi = max(x_hi, 1)

    def px(step):
        return left + (right - left) * (step - x_lo) / (x_hi - x_lo)

    def py(value):
        return bottom - (bottom - top) * (value - y_lo) / (y_hi - y_lo)

    y_ticks = [t for t in nice_ticks(y_lo, y_hi) if y_lo <= t <= y_hi]
    x_ticks = [t for t in nice_ticks(x_lo, x_hi) if x_lo <= t <= x_hi]
    y_step = y_ticks[1] - y_ticks[0] if len(y_ticks) > 1 else 1.0
    x_step = x_ticks[1] - x_ticks[0] if len(x_ticks) > 1 else 1.0
    for t in y_ticks:
        canvas.line(left, py(t), right, py(t), GREY)
        label = _label(t, y_step)
        canvas.text(left - 8 - text_width(label), round(py(t)) - 5, label)
    for t in x_ticks:
        canvas.line(px(t), top, px(t), bottom, GREY)
        label = _label(t, x_step)
        canvas.text(round(px(t)) - text_width(label) // 2, bottom + 8, label)
    canvas.line(left, top, left, bottom, BLACK)
    canvas.line(left, bottom, right, bottom, BLACK)
    canvas.text((left + right) // 2 - text_width("STEP") // 2, height - 18, "STEP")
    canvas.text(8, top - 22, "LOSS")

    def polyline(series, color, size):
        for (s0, v0), (s1, v1) in zip(series, series[1:]):
            canvas.line(px(s0), py(v0), px(s1), py(v1), color, size)

    if train:
        every = max(1, len(train) // (2 * width))  # a long run: no point drawing more segments than pixels
        polyline(train[::every], TRAIN_RAW, 1)
        smoothed = smooth([v for _, v in train], radius=len(train) // 50)
        polyline([(s, v) for (s, _), v in zip(train, smoothed)][::every], TRAIN, 2)
    if valid:
        polyline(valid, VALID, 2)
        for s, v in valid:
            canvas.dot(round(px(s)) - 2, round(py(v)) - 2, VALID, 5)
    # Legend, top right.
    lx = right - 150
    canvas.line(lx, top + 6, lx + 24, top + 6, TRAIN, 2)
    canvas.text(lx + 32, top + 1, "TRAIN")
    canvas.line(lx, top + 24, lx + 24, top + 24, VALID, 2)
    canvas.text(lx + 32, top + 19, "VALID")
    return canvas.png()


def write_loss_curve(path: Path, train, valid) -> None:
    import os
    tmp = _temp_beside(path)
    try:
        Path(tmp).write_bytes(loss_curve_png(train, valid))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
