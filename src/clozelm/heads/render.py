"""Still images without plotting libraries: PNG (zlib + struct) and SVG of attention maps and score grids.

The PNG writer emits 8-bit RGB with filter 0 on every row, which every viewer reads. Labels in PNGs use
a 3x5 pixel font defined below, so a report's heat map says what its panels are without a font file.
"""

from __future__ import annotations

import base64
import html
import struct
import zlib
from pathlib import Path

import numpy as np

from ..errors import ClozelmError

# White -> blue ramp; the page's script uses the same anchors.
RAMP = np.array([[255, 255, 255], [198, 219, 239], [107, 174, 214], [33, 113, 181], [8, 48, 107]], dtype=np.float64)


def colormap(values: np.ndarray) -> np.ndarray:
    """[...] in [0, 1] -> [..., 3] uint8 RGB."""
    x = np.clip(np.nan_to_num(values, nan=0.0), 0.0, 1.0) * (len(RAMP) - 1)
    low = np.minimum(np.floor(x).astype(int), len(RAMP) - 2)
    frac = (x - low)[..., None]
    return np.rint(RAMP[low] * (1 - frac) + RAMP[low + 1] * frac).astype(np.uint8)


def png_bytes(rgb: np.ndarray) -> bytes:
    """[H, W, 3] uint8 -> PNG file bytes."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    height, width, _ = rgb.shape
    raw = np.concatenate([np.zeros((height, 1), dtype=np.uint8), rgb.reshape(height, width * 3)], axis=1)

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit, truecolour, no interlace
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw.tobytes(), 9)) + chunk(b"IEND", b"")


def write_file(path, data: bytes | str) -> Path:
    path = Path(path)
    try:
        if isinstance(data, str):
            path.write_text(data, encoding="utf-8")
        else:
            path.write_bytes(data)
    except OSError as error:
        raise ClozelmError(f"cannot write {path}: {error.strerror}") from None
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
             f'<title>{html.escape(title)}</title>',
             f'<text x="4" y="16" font-size="13">{html.escape(title)}</text>',
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
    return token.replace("\n", "\u21b5").replace("\t", "\u21e5") or "\u2205"


# ---------------------------------------------------------------------------------------------- tiny font

# 3x5 glyphs, one row of three bits per entry, top row first.
_GLYPHS = {
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
    "-": "000 000 111 000 000", ".": "000 000 000 000 010", "/": "001 001 010 100 100", ":": "000 010 000 010 000",
    " ": "000 000 000 000 000", "_": "000 000 000 000 111", "(": "010 100 100 100 010", ")": "010 001 001 001 010",
}


def draw_text(image: np.ndarray, text: str, x: int, y: int, scale: int = 2, color=(31, 35, 40)) -> int:
    """Draw `text` (upper-cased; unknown characters as spaces) at (x, y); returns the x after it."""
    for char in text.upper():
        rows = _GLYPHS.get(char, _GLYPHS[" "]).split()
        for r, bits in enumerate(rows):
            for c, bit in enumerate(bits):
                if bit == "1":
                    y0, x0 = y + r * scale, x + c * scale
                    image[y0:y0 + scale, x0:x0 + scale] = color
        x += 4 * scale
    return x


def text_width(text: str, scale: int = 2) -> int:
    return len(text) * 4 * scale


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
