"""A loss-curve PNG without matplotlib: a tiny line-plot rasteriser over clozelm.raster.

matplotlib is not a dependency of clozelm, and a training curve needs very little: axes, a few ticks
with numbers, two polylines and a legend. Text uses raster's 3x5 pixel font drawn at 2x.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..raster import draw_text, png_bytes, text_width
from ..files import atomic_write_bytes

BLACK, GREY, WHITE = (0, 0, 0), (225, 225, 225), (255, 255, 255)
TRAIN_RAW, TRAIN, VALID = (170, 200, 235), (31, 100, 180), (230, 120, 20)


class Canvas:
    """A white RGB image with the two primitives a line plot needs; text and encoding come from raster."""

    def __init__(self, width: int, height: int):
        self.width, self.height = width, height
        self.pixels = np.full((height, width, 3), WHITE, dtype=np.uint8)

    def dot(self, x: int, y: int, color, size: int = 1) -> None:
        """A size x size square with its top left at (x, y), clipped to the image."""
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + size, self.width), min(y + size, self.height)
        if x0 < x1 and y0 < y1:
            self.pixels[y0:y1, x0:x1] = color

    def line(self, x0: float, y0: float, x1: float, y1: float, color, size: int = 1) -> None:
        # Sample the segment at one-pixel steps: simpler than Bresenham and just as good at this size.
        n = max(1, int(max(abs(x1 - x0), abs(y1 - y0))))
        for k in range(n + 1):
            t = k / n
            self.dot(round(x0 + (x1 - x0) * t), round(y0 + (y1 - y0) * t), color, size)

    def text(self, x: int, y: int, s: str, color=BLACK, scale: int = 2) -> None:
        draw_text(self.pixels, s, x, y, scale, color)

    def png(self) -> bytes:
        return png_bytes(self.pixels)


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
    # Atomic: the trainer rewrites this file at every evaluation, and someone may be viewing it meanwhile.
    atomic_write_bytes(path, loss_curve_png(train, valid))
