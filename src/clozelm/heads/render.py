"""Still images without plotting libraries: PNG and SVG of attention maps and score grids.

PNG encoding and the 3x5 pixel font for labels live in clozelm.raster (shared with the training loss
curve), so a report's heat map says what its panels are without a font file.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

import numpy as np

from ..errors import ClozelmError
from ..files import atomic_write_bytes
from ..raster import draw_text, png_bytes, text_width  # png_bytes is re-exported: callers import it from here

# White -> blue ramp; the page's script uses the same anchors.
RAMP = np.array([[255, 255, 255], [198, 219, 239], [107, 174, 214], [33, 113, 181], [8, 48, 107]], dtype=np.float64)


def colormap(values: np.ndarray) -> np.ndarray:
    """[...] in [0, 1] -> [..., 3] uint8 RGB."""
    x = np.clip(np.nan_to_num(values, nan=0.0), 0.0, 1.0) * (len(RAMP) - 1)
    low = np.minimum(np.floor(x).astype(int), len(RAMP) - 2)
    frac = (x - low)[..., None]
    return np.rint(RAMP[low] * (1 - frac) + RAMP[low + 1] * frac).astype(np.uint8)


def write_file(path, data: bytes | str) -> Path:
    """Write a page, image or report atomically: an existing file is replaced whole or not at all."""
    path = Path(path)
    try:
        atomic_write_bytes(path, data.encode("utf-8") if isinstance(data, str) else data)
    except OSError as error:
        raise ClozelmError(f"cannot write {path}: {error.strerror or type(error).__name__}") from None
    return path


def map_image(matrix: np.ndarray, min_side: int = 512, max_side: int = 2048) -> np.ndarray:
    """A [n, n] map as RGB, each cell a square of pixels so small maps are not postage stamps."""
    n = matrix.shape[0]
    cell = max(1, min(max_side // max(n, 1), -(-min_side // max(n, 1))))
    rgb = colormap(matrix)
    return np.repeat(np.repeat(rgb, cell, axis=0), cell, axis=1)


def map_png(matrix: np.ndarray) -> bytes:
    return png_bytes(map_image(matrix))


def map_svg(matrix: np.ndarray, labels: list[str], title: str) -> str:
    """SVG with token labels on both axes; cells as rectangles up to 128 tokens, an embedded PNG beyond."""
    n = matrix.shape[0]
    cell = max(4, min(24, 720 // max(n, 1)))
    margin = 110
    side = n * cell
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{side + margin + 10}" height="{side + margin + 30}" '
             f'font-family="monospace" font-size="{min(11, cell)}">',
             f'<title>{html.escape(_visible(title))}</title>',
             f'<text x="4" y="16" font-size="13">{html.escape(_visible(title))}</text>',
             f'<g transform="translate({margin},{margin + 20})">']
    if n <= 128:
        rgb = colormap(matrix)
        for i in range(n):
            for j in range(n):
                if matrix[i, j] >= 0.5 / 255:  # white cells are the background
                    r, g, b = rgb[i, j]
                    parts.append(f'<rect x="{j * cell}" y="{i * cell}" width="{cell}" height="{cell}" '
                                 f'fill="#{r:02x}{g:02x}{b:02x}"><title>{matrix[i, j]:.4f}</title></rect>')
    else:
        data = base64.b64encode(png_bytes(colormap(matrix))).decode("ascii")
        parts.append(f'<image width="{side}" height="{side}" preserveAspectRatio="none" '
                     f'style="image-rendering:pixelated" href="data:image/png;base64,{data}"/>')
    parts.append(f'<rect width="{side}" height="{side}" fill="none" stroke="#d0d7de"/>')
    if cell >= 6:
        for i, label in enumerate(labels):
            shown = html.escape(_visible(label)[:14])
            parts.append(f'<text x="-4" y="{i * cell + cell * 0.75}" text-anchor="end">{shown}</text>')
            parts.append(f'<text transform="translate({i * cell + cell * 0.75},-4) rotate(-90)">{shown}</text>')
    parts.append("</g></svg>")
    return "\n".join(parts) + "\n"


def _visible(token: str) -> str:
    """A token as a label: line breaks and tabs as arrows, other control characters (which XML forbids: an SVG
    holding a form feed does not open) and the non-characters U+FFFE/U+FFFF as U+FFFD."""
    token = token.replace("\n", "\u21b5").replace("\t", "\u21e5")
    return "".join("\ufffd" if (ord(c) < 32 and c != "\r") or c in "\ufffe\uffff" else c for c in token) or "\u2205"


def score_grid_png(panels: list[tuple[str, np.ndarray]], best: np.ndarray | None = None,
                   best_names: list[str] | None = None, cell: int = 14) -> bytes:
    """Panels of [L, H] scores in [0, 1] side by side, titled, with layer numbers; optionally a last panel
    colouring each head by the index in `best` (-1 = no label) with a legend of `best_names`."""
    n_layers, n_heads = panels[0][1].shape
    pad, title_h, label_w = 10, 16, 24
    panel_w = max(n_heads * cell, max(text_width(t) for t, _ in panels) + 4)
    count = len(panels) + (best is not None)
    width = label_w + count * (panel_w + pad) + pad
    legend_h = 0 if best is None else 14 * (len(best_names) + 1) + 6
    height = pad + title_h + n_layers * cell + pad + 12 + legend_h
    image = np.full((height, width, 3), 255, dtype=np.uint8)
    top = pad + title_h
    for layer in range(n_layers):
        draw_text(image, str(layer), 4, top + layer * cell + (cell - 10) // 2)
    x0 = label_w
    for title, scores in panels:
        draw_text(image, title, x0, pad)
        block = colormap(np.nan_to_num(scores, nan=0.0))
        for layer in range(n_layers):
            for head in range(n_heads):
                colour = block[layer, head] if not np.isnan(scores[layer, head]) else (230, 230, 230)
                image[top + layer * cell + 1: top + (layer + 1) * cell, x0 + head * cell + 1: x0 + (head + 1) * cell] = colour
        x0 += panel_w + pad
    if best is not None:
        palette = _palette(len(best_names))
        draw_text(image, "BEST", x0, pad)
        for layer in range(n_layers):
            for head in range(n_heads):
                label = int(best[layer, head])
                colour = palette[label] if label >= 0 else (235, 235, 235)
                image[top + layer * cell + 1: top + (layer + 1) * cell, x0 + head * cell + 1: x0 + (head + 1) * cell] = colour
        y = top + n_layers * cell + pad + 12
        for index, name in enumerate(best_names):
            image[y + 14 * index: y + 14 * index + 10, label_w: label_w + 10] = palette[index]
            draw_text(image, name, label_w + 14, y + 14 * index)
    caption_y = top + n_layers * cell + 6
    x = draw_text(image, "HEAD 0-" + str(n_heads - 1) + " LEFT TO RIGHT, LAYER DOWN.  SCORE 0 ", label_w, caption_y, scale=1)
    ramp = colormap(np.linspace(0, 1, 80))
    image[caption_y:caption_y + 5, x:x + 80] = ramp[None]
    draw_text(image, " 1", x + 80, caption_y, scale=1)
    return png_bytes(image)


def _palette(count: int) -> list[tuple[int, int, int]]:
    base = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
            (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]
    return [base[i % len(base)] for i in range(count)]
