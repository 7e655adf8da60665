"""The study's pictures as PNG files, drawn with training/plot.py's canvas (no matplotlib): held-out loss against
tokens per objective, accuracy per task and objective, cloze accuracy by the number of hidden tokens.

Text is raster's 3x5 pixel font (upper case, digits and a little punctuation), so labels stay short.
"""

from __future__ import annotations

import math

from ..training.plot import BLACK, GREY, Canvas, nice_ticks
from ..raster import text_width

# One colour per objective, the same in every picture.
COLORS = {"clm": (31, 100, 180), "fim": (90, 170, 230), "mlm": (200, 60, 40), "mdlm": (240, 150, 30),
          "hybrid": (60, 150, 70)}
FALLBACK = (120, 120, 120)
LEFT, RIGHT_PAD, TOP, BOTTOM_PAD = 70, 20, 40, 50


def _tick(value: float, step: float) -> str:
    if abs(value) >= 10000 and float(value).is_integer():
        return f"{value / 1e6:g}M" if abs(value) >= 1e6 else f"{value / 1000:g}K"
    decimals = max(0, -math.floor(math.log10(step))) if 0 < step < 1 else 0
    return f"{value:.{decimals}f}"


class _Axes:
    """A plot area with linear axes, grid lines and tick labels."""

    def __init__(self, canvas: Canvas, x_range, y_range, title: str, x_label: str, y_label: str,
                 x_ticks: list[tuple[float, str]] | None = None):
        self.canvas = canvas
        self.left, self.right = LEFT, canvas.width - RIGHT_PAD
        self.top, self.bottom = TOP, canvas.height - BOTTOM_PAD
        (self.x_lo, self.x_hi), (self.y_lo, self.y_hi) = x_range, y_range
        y_ticks = [t for t in nice_ticks(self.y_lo, self.y_hi) if self.y_lo <= t <= self.y_hi]
        y_step = y_ticks[1] - y_ticks[0] if len(y_ticks) > 1 else 1.0
        for t in y_ticks:
            canvas.line(self.left, self.py(t), self.right, self.py(t), GREY)
            label = _tick(t, y_step)
            canvas.text(self.left - 8 - text_width(label), round(self.py(t)) - 5, label)
        if x_ticks is None:
            ticks = [t for t in nice_ticks(self.x_lo, self.x_hi) if self.x_lo <= t <= self.x_hi]
            step = ticks[1] - ticks[0] if len(ticks) > 1 else 1.0
            x_ticks = [(t, _tick(t, step)) for t in ticks]
        for t, label in x_ticks:
            canvas.line(self.px(t), self.top, self.px(t), self.bottom, GREY)
            canvas.text(round(self.px(t)) - text_width(label) // 2, self.bottom + 8, label)
        canvas.line(self.left, self.top, self.left, self.bottom, BLACK)
        canvas.line(self.left, self.bottom, self.right, self.bottom, BLACK)
        canvas.text(self.left, 10, title)
        canvas.text((self.left + self.right) // 2 - text_width(x_label) // 2, canvas.height - 18, x_label)
        canvas.text(8, self.top - 14, y_label, scale=1)

    def px(self, x: float) -> float:
        return self.left + (self.right - self.left) * (x - self.x_lo) / ((self.x_hi - self.x_lo) or 1.0)

    def py(self, y: float) -> float:
        return self.bottom - (self.bottom - self.top) * (y - self.y_lo) / ((self.y_hi - self.y_lo) or 1.0)

    def legend(self, names: list[str]) -> None:
        x = self.right - 110
        for i, name in enumerate(names):
            y = self.top + 6 + 16 * i
            self.canvas.line(x, y + 4, x + 20, y + 4, COLORS.get(name, FALLBACK), 3)
            self.canvas.text(x + 28, y, name)


def _padded(lo: float, hi: float, floor: float | None = None) -> tuple[float, float]:
    pad = 0.05 * ((hi - lo) or abs(hi) or 1.0)
    lo, hi = lo - pad, hi + pad
    return (max(lo, floor) if floor is not None else lo), hi


def lines_png(series: dict[str, list[tuple[float, float]]], title: str, x_label: str, y_label: str,
              x_ticks: list[tuple[float, str]] | None = None, y_floor: float | None = None,
              width: int = 800, height: int = 480) -> bytes:
    """One polyline with markers per name (objective), a legend top right."""
    canvas = Canvas(width, height)
    points = [(x, y) for s in series.values() for x, y in s if math.isfinite(y)]
    if not points:
        canvas.text(LEFT, TOP, "NO DATA")
        return canvas.png()
    xs, ys = [x for x, _ in points], [y for _, y in points]
    x_range = (min(xs), max(xs)) if x_ticks else (0.0, max(max(xs), 1.0))
    if x_ticks:
        x_range = (x_range[0] - 0.3, x_range[1] + 0.3)
    axes = _Axes(canvas, x_range, _padded(min(ys), max(ys), y_floor), title, x_label, y_label, x_ticks)
    for name, s in series.items():
        s = [(x, y) for x, y in s if math.isfinite(y)]
        color = COLORS.get(name, FALLBACK)
        for (x0, y0), (x1, y1) in zip(s, s[1:]):
            canvas.line(axes.px(x0), axes.py(y0), axes.px(x1), axes.py(y1), color, 2)
        for x, y in s:
            canvas.dot(round(axes.px(x)) - 2, round(axes.py(y)) - 2, color, 5)
    axes.legend(list(series))
    return canvas.png()


def bars_png(groups: list[str], names: list[str], values: dict[tuple[str, str], tuple[float, float | None]],
             title: str, y_label: str, width: int = 900, height: int = 480) -> bytes:
    """Grouped bars: for each group (a task's figure) one bar per name (objective), its mean, with a whisker of
    +- its spread when there is one. values[(group, name)] = (mean, spread or None); missing pairs are gaps."""
    canvas = Canvas(width, height)
    if not values:
        canvas.text(LEFT, TOP, "NO DATA")
        return canvas.png()
    hi = max(m + (s or 0.0) for m, s in values.values())
    axes = _Axes(canvas, (0.0, float(len(groups))), (0.0, max(1.0, hi) if hi > 0.5 else max(hi * 1.1, 0.1)),
                 title, "", y_label, x_ticks=[])
    slot = (axes.right - axes.left) / max(1, len(groups))
    bar = max(2, int(slot * 0.8 / max(1, len(names))))
    for g, group in enumerate(groups):
        x0 = axes.left + g * slot + slot * 0.1
        label = group.upper()
        canvas.text(round(axes.left + (g + 0.5) * slot) - text_width(label) // 2, axes.bottom + 8, label)
        for n, name in enumerate(names):
            if (group, name) not in values:
                continue
            mean, spread = values[(group, name)]
            color = COLORS.get(name, FALLBACK)
            left = round(x0 + n * bar)
            top = round(axes.py(max(mean, 0.0)))
            canvas.pixels[top:round(axes.bottom), left:left + bar - 1] = color
            if spread:
                centre = left + bar // 2
                canvas.line(centre, axes.py(max(mean - spread, axes.y_lo)), centre,
                            axes.py(min(mean + spread, axes.y_hi)), BLACK)
    axes.legend(names)
    return canvas.png()
