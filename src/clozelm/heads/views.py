"""One self-contained HTML page (head view + model view) for the attention of one or two models.

Size is what limits the page: 512 tokens x 12 layers x 12 heads is 38 M probabilities, and the page must
stay under 10 MB. Each map is stored as:

* the sink columns (first token, [CLS]/[SEP]/eos) as uint16 fixed point, nearly exact, because the
  sink-aware view divides every row by what is left after removing them;
* every other weight as a uint8 code times a per-row step: step = max(row's largest non-sink weight /
  255, floor x the row's non-sink mass). The floor is 0 (pure per-row scale) unless the page would exceed its
  budget; then the largest maps get the smallest floor (1/8192, 1/4096, ...) that fits their share. Faint
  weights are what such a floor rounds, so the picture does not change; scaled by what the sinks leave, the
  floor stays the same size in the sink-hidden view, which divides each row by that mass;
* zlib-compressed on its own (a causal map keeps only its lower triangle), so the page inflates only
  what it shows, with the browser's DecompressionStream. Small pages skip compression, so they also
  open where DecompressionStream is missing.

Blob of one map (little-endian): float32 step[T]; uint16 sink[S][T] (column s, row i; value / 65535);
uint8 code[i][j] for j < T (j <= i when causal), row after row, 0 in sink columns.
weight[i][j] = code * step[i], or sink[s][i] / 65535 in sink column s.
"""

from __future__ import annotations

import base64
import html
import json
import os
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ClozelmError
from .extract import HeadMaps

PAGE_BUDGET = 9_800_000  # bytes: keeps the page under 10 MB
COMPRESS_ABOVE = 1_000_000  # raw map bytes above which maps are zlib-compressed
LEVELS = 255
SINK_SCALE = 65535
FLOORS = (0.0, 1 / 8192, 1 / 4096, 1 / 2048, 1 / 1024, 1 / 512, 1 / 256, 1 / 128, 1 / 64, 1 / 32)
THUMB_SIZE = 64
ASSETS = Path(__file__).parent / "assets"


def row_steps(matrix: np.ndarray, sinks: np.ndarray, floor: float = 0.0) -> np.ndarray:
    """Quantisation step of each row: its largest non-sink weight / 255, at least `floor` times the row's
    non-sink mass (see the module docstring)."""
    rest = np.where(sinks[None, :], 0.0, matrix)
    step = np.maximum(rest.max(axis=1) / LEVELS, floor * rest.sum(axis=1)).astype(np.float32)
    return np.where(step > 0, step, np.float32(1.0 / LEVELS))  # an all-sink row has nothing to scale


def encode_map(matrix: np.ndarray, sinks: np.ndarray, causal: bool, floor: float, compress: bool) -> bytes:
    step = row_steps(matrix, sinks, floor)
    codes = np.rint(matrix / step[:, None]).clip(0, LEVELS).astype(np.uint8)
    codes[:, sinks] = 0
    sink_values = np.rint(matrix[:, sinks].T * SINK_SCALE).clip(0, SINK_SCALE).astype("<u2")  # [S, T]
    body = codes[np.tril_indices(len(codes))] if causal else codes.reshape(-1)
    blob = step.astype("<f4").tobytes() + sink_values.tobytes() + body.tobytes()
    return zlib.compress(blob, 6) if compress else blob


def decode_map(blob: bytes, sinks, causal: bool, compressed: bool) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of encode_map, as the page's script does it: (weights [T, T], step per row [T])."""
    if compressed:
        blob = zlib.decompress(blob)
    sinks = np.asarray(sinks, dtype=bool)
    n, n_sinks = len(sinks), int(sinks.sum())
    step = np.frombuffer(blob[:4 * n], dtype="<f4")
    sink_values = np.frombuffer(blob[4 * n:4 * n + 2 * n_sinks * n], dtype="<u2").reshape(n_sinks, n)
    codes = np.frombuffer(blob[4 * n + 2 * n_sinks * n:], dtype=np.uint8)
    out = np.zeros((n, n), dtype=np.float32)
    if causal:
        out[np.tril_indices(n)] = codes
    else:
        out[:] = codes.reshape(n, n)
    out *= step[:, None]
    out[:, sinks] = sink_values.T / SINK_SCALE
    return out, step


def thumbnail(matrix: np.ndarray, size: int = THUMB_SIZE) -> np.ndarray:
    """Max-pool a map to at most size x size, so thin lines (previous-token diagonals) stay visible."""
    n = matrix.shape[-1]
    if n <= size:
        return matrix
    starts = (np.arange(size) * n) // size
    return np.maximum.reduceat(np.maximum.reduceat(matrix, starts, axis=-1), starts, axis=-2)


@dataclass
class _Slot:
    model: int
    layer: int
    head: int
    blob: bytes
    floor: float = 0.0


def _estimated_size(matrix: np.ndarray, sinks: np.ndarray, floor: float, compress: bool) -> int:
    """Compressed size of a map, guessed from every 4th row (a quarter of the work of encoding it)."""
    n = len(matrix)
    if not compress:
        return 4 * n + 2 * int(sinks.sum()) * n + n * n
    sample = matrix[::4]
    step = row_steps(sample, sinks, floor)
    codes = np.rint(sample / step[:, None]).clip(0, LEVELS).astype(np.uint8)
    codes[:, sinks] = 0
    return int(len(zlib.compress(codes.tobytes(), 6)) * n / len(sample)) + 6 * n


def _encode_all(maps_list: list[HeadMaps], compress: bool, budget: int) -> list[_Slot]:
    """Encode every map within `budget` base64 bytes in all. Water-filling: maps whose exact (floor 0)
    encoding fits the fair share keep it; the largest maps take the smallest floor that fits what is left.
    Sizes are estimated while searching, and each map is encoded once at the end."""
    sink_masks = [np.asarray(m.sinks, dtype=bool) for m in maps_list]
    b64 = lambda n: 4 * ((n + 2) // 3)  # noqa: E731 - base64 length of n bytes
    slots = [_Slot(k, layer, head, b"") for k, m in enumerate(maps_list)
             for layer in range(m.n_layers) for head in range(m.n_heads)]

    def estimate(slot, floor):
        m = maps_list[slot.model]
        return b64(_estimated_size(m.attentions[slot.layer][slot.head], sink_masks[slot.model], floor, compress))

    exact = {id(slot): estimate(slot, 0.0) for slot in slots}
    remaining, left = budget, len(slots)
    for slot in sorted(slots, key=lambda s: exact[id(s)]):
        share = remaining / left
        size = exact[id(slot)]
        if size > share:
            # Sizes shrink as the floor grows: binary search for the smallest floor that fits the share.
            low, high, chosen = 1, len(FLOORS) - 1, len(FLOORS) - 1
            while low <= high:
                middle = (low + high) // 2
                if estimate(slot, FLOORS[middle]) <= share:
                    chosen, high = middle, middle - 1
                else:
                    low = middle + 1
            slot.floor = FLOORS[chosen]
            size = estimate(slot, slot.floor)
        remaining -= size
        left -= 1

    def encode(slot):
        m = maps_list[slot.model]
        slot.blob = encode_map(m.attentions[slot.layer][slot.head], sink_masks[slot.model], m.causal, slot.floor, compress)

    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:  # zlib releases the GIL
        list(pool.map(encode, slots))
    return slots


def _payload(maps: HeadMaps, blobs: list[list[str]], compress: bool) -> dict:
    thumbs = []
    for layer in maps.attentions:
        codes = np.rint(thumbnail(layer).clip(0, 1) * 255).astype(np.uint8).tobytes()
        thumbs.append(base64.b64encode(zlib.compress(codes, 6) if compress else codes).decode("ascii"))
    return {
        "name": maps.model_name, "causal": maps.causal, "n_layers": maps.n_layers, "n_heads": maps.n_heads,
        "tokens": maps.tokens, "words": maps.words, "word_of_token": maps.word_of_token,
        "sinks": [int(s) for s in maps.sinks], "special": [int(s) for s in maps.special],
        "encoding": "deflate" if compress else "raw", "maps": blobs,
        "thumb_size": min(maps.n_tokens, THUMB_SIZE), "thumbs": thumbs, "notes": list(maps.notes),
    }


def page_data(maps_list: list[HeadMaps], title: str | None = None, budget: int = PAGE_BUDGET) -> dict:
    """The JSON the page's script reads (see the module docstring for the map blobs)."""
    if not maps_list:
        raise ClozelmError("nothing to show")
    raw_bytes = sum(m.n_layers * m.n_heads * (m.n_tokens * 6 + m.n_tokens ** 2) for m in maps_list)
    compress = raw_bytes > COMPRESS_ABOVE
    empty = [[[] for _ in m.attentions] for m in maps_list]
    title = title or "Attention heads: " + " vs ".join(m.model_name for m in maps_list)
    data = {"title": title, "text": maps_list[0].text, "notes": [],
            "models": [_payload(m, e, compress) for m, e in zip(maps_list, empty)]}
    overhead = len(_fill_template(data).encode("utf-8")) + 8 * sum(m.n_layers * m.n_heads for m in maps_list)
    slots = _encode_all(maps_list, compress, budget - overhead)
    for slot in slots:
        data["models"][slot.model]["maps"][slot.layer].append(base64.b64encode(slot.blob).decode("ascii"))
    coarse = [s for s in slots if s.floor > 0]
    if coarse:
        data["notes"].append(f"to keep the page under 10 MB, {len(coarse)} of {len(slots)} maps store weights "
                             f"below 1/255 of their row's largest with an absolute step of up to "
                             f"{max(s.floor for s in coarse):.4f}")
    return data


def _json_for_script(data) -> str:
    # "<" escaped keeps "</script>" in the user's text from closing the script; "://" escaped keeps a URL
    # in the text from reading as a link to anything (the page references nothing outside itself).
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).replace("<", "\\u003c").replace("://", ":\\/\\/")


def _asset(name: str) -> str:
    return (ASSETS / name).read_text(encoding="utf-8")


def render_page(maps_list: list[HeadMaps], title: str | None = None) -> str:
    """The whole page as a string: every byte of script, style and data inline."""
    budget = PAGE_BUDGET
    for _ in range(3):
        page = _fill_template(page_data(maps_list, title, budget))
        excess = len(page.encode("utf-8")) - PAGE_BUDGET
        if excess <= 0:
            break
        budget -= excess + 100_000  # the estimate of everything but the maps was short: ask for less
    return page


def _fill_template(data: dict) -> str:
    title = html.escape(data["title"])
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
        f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{title}</title>\n"
        f"<style>\n{_asset('heads.css')}\n</style></head>\n<body>\n"
        "<div id=\"app\"><noscript>This page draws attention maps with JavaScript; enable it to see them."
        "</noscript></div>\n"
        f"<script type=\"application/json\" id=\"heads-data\">{_json_for_script(data)}</script>\n"
        f"<script>\n{_asset('heads.js')}\n</script>\n</body></html>\n"
    )


def write_page(maps_list: list[HeadMaps], path) -> Path:
    from .render import write_file
    return write_file(path, render_page(maps_list))


def notebook_html(maps_list: list[HeadMaps], height: int = 780) -> str:
    """The page inside an iframe (srcdoc), so its script and style cannot clash with the notebook's."""
    page = render_page(maps_list)
    return (f'<iframe srcdoc="{html.escape(page, quote=True)}" sandbox="allow-scripts" '
            f'style="width:100%;height:{height}px;border:1px solid #ccc;border-radius:4px"></iframe>')
