"""The loss curve PNG."""

from __future__ import annotations

import struct
import zlib

from clozelm.training.plot import loss_curve_png


def test_loss_curve_png_is_a_valid_png():
    png = loss_curve_png([(s, 5 / s ** 0.3) for s in range(1, 200)], [(50, 2.9), (100, 2.5), (199, 2.4)], 400, 300)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    length, kind = struct.unpack(">I4s", png[8:16])
    assert kind == b"IHDR" and struct.unpack(">II", png[16:24]) == (400, 300)
    idat = png.index(b"IDAT")
    size = struct.unpack(">I", png[idat - 4:idat])[0]
    raw = zlib.decompress(png[idat + 4: idat + 4 + size])
    assert len(raw) == 300 * (1 + 400 * 3)
    assert len(set(raw)) > 5  # something was drawn
