"""The training report: loss.png is a valid PNG of the expected size showing both curves; report.md has the figures."""

import struct
import zlib

import numpy as np
import pytest
from click.testing import CliRunner

from mlxtune.cli import cli
from mlxtune.plot import COLORS, encode_png, line_chart, nice_ticks
from mlxtune.training.checkpoint import read_metrics
from mlxtune.report import PNG_SIZE, loss_curves


def decode_png(data: bytes) -> np.ndarray:
    """A strict reader for what encode_png writes (RGB 8-bit, filter 0): checks signature, chunk CRCs and sizes."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, []
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + n]
        (crc,) = struct.unpack(">I", data[pos + 8 + n : pos + 12 + n])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF, kind
        chunks.append((kind, body))
        pos += 12 + n
    assert [k for k, _ in chunks][0] == b"IHDR" and chunks[-1][0] == b"IEND"
    w, h, depth, color, comp, filt, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    assert (depth, color, comp, filt, interlace) == (8, 2, 0, 0, 0)
    raw = zlib.decompress(b"".join(b for k, b in chunks if k == b"IDAT"))
    rows = np.frombuffer(raw, dtype=np.uint8).reshape(h, 1 + 3 * w)
    assert (rows[:, 0] == 0).all()
    return rows[:, 1:].reshape(h, w, 3)


def test_png_round_trip():
    img = np.random.default_rng(0).integers(0, 256, size=(7, 5, 3), dtype=np.uint8)
    np.testing.assert_array_equal(decode_png(encode_png(img)), img)
    with pytest.raises(ValueError):
        encode_png(img.astype(np.float32))


def test_nice_ticks():
    assert nice_ticks(0, 68) == [0, 20, 40, 60, 80]
    assert nice_ticks(0.146, 2.578) == [0.0, 1.0, 2.0, 3.0]
    assert nice_ticks(5, 5) == [5.0, 5.5, 6.0]  # a flat curve still gets an axis


def test_chart_draws_each_series():
    img = line_chart({"train": ([1, 2, 3], [3.0, 2.0, 1.5]), "valid": ([0, 3], [3.2, 1.8])}, 400, 300, title="loss")
    assert img.shape == (300, 400, 3)
    for color in COLORS[:2]:
        assert (img == color).all(axis=-1).sum() > 50  # both lines (and legend boxes) are there


def test_lora_writes_report(tiny_model, tmp_path, backend):
    from pathlib import Path

    data = Path(__file__).resolve().parent.parent / "data" / "notes.jsonl"
    run = tmp_path / "run"
    out = CliRunner().invoke(cli, ["lora", "--data", str(data), "--model", str(tiny_model), "--iters", "4", "--val-every", "2", "--backend", backend, "-o", str(run)])
    assert out.exit_code == 0, out.output
    assert "Report: " in out.output
    img = decode_png((run / "loss.png").read_bytes())
    assert img.shape == (PNG_SIZE[1], PNG_SIZE[0], 3)
    metrics = read_metrics(run)
    curves = loss_curves(metrics)
    assert curves["train"][0] == [1, 2, 3, 4] and curves["valid"][0] == [0, 2, 4]
    for color in COLORS[:2]:  # the train and the valid curve are drawn
        assert (img == color).all(axis=-1).sum() > 100
    report = (run / "report.md").read_text()
    assert "| before training | 0 |" in report and "| final | 4 |" in report and "![loss](loss.png)" in report
    assert report.count("**Base model**") == 3 and report.count("**Tuned**") == 3
