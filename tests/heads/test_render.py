"""Still images of one head: PNG and SVG without plotting libraries."""

from __future__ import annotations

import struct
import zlib

import numpy as np

from clozelm.heads import attention_map
from clozelm.heads.render import map_png, map_svg, png_bytes

from .helpers import random_model


def test_png_and_svg_of_one_head(bpe):
    maps = attention_map(random_model(bpe), "The keeper lit the lamp.")
    matrix, labels = maps.head(1, 2)
    png = map_png(matrix)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    assert width == height and width % len(labels) == 0 and width >= 512
    # The PNG is valid: the IDAT stream inflates to rows of filter byte + RGB.
    idat = png[33 + 8:-12]
    assert len(zlib.decompress(idat)) == height * (1 + 3 * width)
    svg = map_svg(*maps.head(1, 2, words=True, hide_sinks=True), title="t")
    assert svg.startswith("<svg") and svg.count("<text") >= 2 * len(maps.words)
    assert png_bytes(np.zeros((2, 3, 3), np.uint8))[:8] == b"\x89PNG\r\n\x1a\n"
    # control characters (a form feed of an old text file, ESC) are no XML: shown as U+FFFD, the SVG still parses
    import xml.etree.ElementTree as ET
    ugly = map_svg(np.eye(2, dtype=np.float32), ["page\x0cbreak", "\x1b[0m"], title="model\x0b")
    ET.fromstring(ugly)
    assert "page\ufffdbreak" in ugly
