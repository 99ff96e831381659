"""Line charts as PNG files, with numpy and zlib only (for the training report).

A plotting library would be one more dependency for one picture; this draws
axes, ticks, labels (a 5x7 bitmap font), a legend and polylines into an RGB
array and encodes it as a PNG (RGB, 8 bits, no interlace).
"""

from __future__ import annotations

import math
import struct
import zlib

import numpy as np

# 5x7 glyphs, rows top to bottom, '#' = ink. Upper case is drawn as lower case.
_FONT_ROWS = {
    "0": ".###. #...# #..## #.#.# ##..# #...# .###.", "1": "..#.. .##.. ..#.. ..#.. ..#.. ..#.. .###.",
    "2": ".###. #...# ....# ...#. ..#.. .#... #####", "3": "####. ....# ....# .###. ....# ....# ####.",
    "4": "...#. ..##. .#.#. #..#. ##### ...#. ...#.", "5": "##### #.... ####. ....# ....# #...# .###.",
    "6": ".###. #.... #.... ####. #...# #...# .###.", "7": "##### ....# ...#. ..#.. .#... .#... .#...",
    "8": ".###. #...# #...# .###. #...# #...# .###.", "9": ".###. #...# #...# .#### ....# ....# .###.",
    ".": "..... ..... ..... ..... ..... .##.. .##..", ",": "..... ..... ..... ..... .##.. ..#.. .#...",
    "-": "..... ..... ..... ####. ..... ..... .....", "+": "..... ..#.. ..#.. ##### ..#.. ..#.. .....",
    ":": "..... .##.. .##.. ..... .##.. .##.. .....", "/": "....# ...#. ...#. ..#.. .#... .#... #....",
    "(": "...#. ..#.. .#... .#... .#... ..#.. ...#.", ")": ".#... ..#.. ...#. ...#. ...#. ..#.. .#...",
    "%": "##..# ##.#. ...#. ..#.. .#... .#.## #..##", "=": "..... ..... ##### ..... ##### ..... .....",
    "_": "..... ..... ..... ..... ..... ..... #####", " ": "..... ..... ..... ..... ..... ..... .....",
    "a": "..... ..... .###. ....# .#### #...# .####", "b": "#.... #.... ####. #...# #...# #...# ####.",
    "c": "..... ..... .###. #.... #.... #...# .###.", "d": "....# ....# .#### #...# #...# #...# .####",
    "e": "..... ..... .###. #...# ##### #.... .###.", "f": "..##. .#..# .#... ###.. .#... .#... .#...",
    "g": "..... .#### #...# #...# .#### ....# .###.", "h": "#.... #.... #.##. ##..# #...# #...# #...#",
    "i": "..#.. ..... .##.. ..#.. ..#.. ..#.. .###.", "j": "...#. ..... ..##. ...#. ...#. #..#. .##..",
    "k": "#.... #.... #..#. #.#.. ##... #.#.. #..#.", "l": ".##.. ..#.. ..#.. ..#.. ..#.. ..#.. .###.",
    "m": "..... ..... ##.#. #.#.# #.#.# #...# #...#", "n": "..... ..... #.##. ##..# #...# #...# #...#",
    "o": "..... ..... .###. #...# #...# #...# .###.", "p": "..... ..... ####. #...# ####. #.... #....",
    "q": "..... ..... .##.# #..## .#### ....# ....#", "r": "..... ..... #.##. ##..# #.... #.... #....",
    "s": "..... ..... .###. #.... .###. ....# ####.", "t": ".#... .#... ###.. .#... .#... .#..# ..##.",
    "u": "..... ..... #...# #...# #...# #..## .##.#", "v": "..... ..... #...# #...# #...# .#.#. ..#..",
    "w": "..... ..... #...# #...# #.#.# #.#.# .#.#.", "x": "..... ..... #...# .#.#. ..#.. .#.#. #...#",
    "y": "..... ..... #...# #...# .#### ....# .###.", "z": "..... ..... ##### ...#. ..#.. .#... #####",
}
FONT = {c: np.array([[ch == "#" for ch in row] for row in rows.split()], dtype=bool) for c, rows in _FONT_ROWS.items()}  # (7, 5) each
COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189)]
INK, GRID = (40, 40, 40), (225, 225, 225)


def text_width(text: str, scale: int = 1) -> int:
    return len(text) * 6 * scale


def draw_text(img: np.ndarray, x: int, y: int, text: str, color=INK, scale: int = 1) -> None:
    """Draw ``text`` with its top-left corner at (x, y); unknown characters are drawn as blanks."""
    for i, ch in enumerate(text.lower()):
        glyph = FONT.get(ch)
        if glyph is None:
            continue
        g = np.kron(glyph, np.ones((scale, scale), dtype=bool)) if scale > 1 else glyph
        x0 = x + i * 6 * scale
        h, w = g.shape
        ys, xs = slice(max(y, 0), min(y + h, img.shape[0])), slice(max(x0, 0), min(x0 + w, img.shape[1]))
        sub = g[ys.start - y : ys.stop - y, xs.start - x0 : xs.stop - x0]
        img[ys, xs][sub] = color


def _line(img: np.ndarray, x0: float, y0: float, x1: float, y1: float, color, width: int = 2) -> None:
    n = int(max(abs(x1 - x0), abs(y1 - y0)) * 2) + 2
    xs = np.rint(np.linspace(x0, x1, n)).astype(int)
    ys = np.rint(np.linspace(y0, y1, n)).astype(int)
    for dx in range(-(width // 2), width - width // 2):
        for dy in range(-(width // 2), width - width // 2):
            px, py = xs + dx, ys + dy
            ok = (px >= 0) & (px < img.shape[1]) & (py >= 0) & (py < img.shape[0])
            img[py[ok], px[ok]] = color


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values covering [lo, hi] (steps of 1, 2 or 5 times a power of ten)."""
    if not hi > lo:
        hi = lo + 1.0
    raw = (hi - lo) / max(n - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.floor(lo / step) * step
    ticks, t = [], first
    while t <= hi + step * 1e-9:
        ticks.append(round(t, 12))
        t += step
    return ticks if ticks[-1] >= hi else ticks + [round(ticks[-1] + step, 12)]


def _label(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1e4 or abs(v) < 1e-3:
        return f"{v:.0e}"
    return f"{v:.3f}".rstrip("0").rstrip(".")


def line_chart(series: dict[str, tuple[list[float], list[float]]], width: int = 800, height: int = 480, title: str = "", xlabel: str = "", ylabel: str = "") -> np.ndarray:
    """An RGB image (height, width, 3) uint8 of the named (xs, ys) series; a series of one point is drawn as a dot."""
    img = np.full((height, width, 3), 255, dtype=np.uint8)
    left, right, top, bottom = 64, 16, 36 if title else 16, 44
    pw, ph = width - left - right, height - top - bottom
    points = [(x, y) for xs, ys in series.values() for x, y in zip(xs, ys) if y is not None and math.isfinite(y)]
    if not points:
        points = [(0.0, 0.0), (1.0, 1.0)]
    xt = nice_ticks(min(p[0] for p in points), max(p[0] for p in points))
    yt = nice_ticks(min(p[1] for p in points), max(p[1] for p in points))
    X = lambda x: left + (x - xt[0]) / (xt[-1] - xt[0]) * pw  # noqa: E731
    Y = lambda y: top + ph - (y - yt[0]) / (yt[-1] - yt[0]) * ph  # noqa: E731
    for t in yt:
        _line(img, left, Y(t), left + pw, Y(t), GRID, 1)
        draw_text(img, left - 6 - text_width(_label(t)), int(Y(t)) - 3, _label(t))
    for t in xt:
        _line(img, X(t), top + ph, X(t), top + ph + 4, INK, 1)
        draw_text(img, int(X(t)) - text_width(_label(t)) // 2, top + ph + 8, _label(t))
    _line(img, left, top, left, top + ph, INK, 1)
    _line(img, left, top + ph, left + pw, top + ph, INK, 1)
    if title:
        draw_text(img, (width - text_width(title, 2)) // 2, 8, title, scale=2)
    if xlabel:
        draw_text(img, left + (pw - text_width(xlabel)) // 2, height - 14, xlabel)
    if ylabel:
        draw_text(img, 4, top - 12 if top > 20 else 2, ylabel)
    for k, (name, (xs, ys)) in enumerate(series.items()):
        color = COLORS[k % len(COLORS)]
        pts = [(X(x), Y(y)) for x, y in zip(xs, ys) if y is not None and math.isfinite(y)]
        for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
            _line(img, x0, y0, x1, y1, color, 2)
        for x, y in pts if len(pts) <= 40 else pts[-1:]:
            _line(img, x - 2, y, x + 2, y, color, 3)
        lx, ly = left + pw - 150, top + 8 + 14 * k
        img[ly : ly + 8, lx : lx + 16] = color
        draw_text(img, lx + 22, ly, name)
    return img


def encode_png(img: np.ndarray) -> bytes:
    """PNG bytes of an RGB uint8 image (height, width, 3)."""
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"an RGB uint8 image (H, W, 3) is needed, not {img.dtype} {img.shape}")
    h, w, _ = img.shape
    raw = np.concatenate([np.zeros((h, 1), dtype=np.uint8), img.reshape(h, w * 3)], axis=1).tobytes()  # filter 0 per row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
