"""A small line chart drawn with Pillow (no plotting dependency): for benchmark pictures such as error
against NFE."""

from __future__ import annotations

import io
import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from latentfm.atomic import write_bytes_atomic

COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 70, 170, 56, 50


def _log_ticks(low: float, high: float) -> list[float]:
    """1, 2 and 5 times powers of ten inside ``[low, high]``."""
    ticks = []
    for exponent in range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1):
        ticks += [m * 10.0**exponent for m in (1, 2, 5) if low <= m * 10.0**exponent <= high]
    return ticks


def save_line_chart(
    series: dict[str, list[tuple[float, float]]],
    path: str | Path,
    title: str,
    x_label: str,
    y_label: str,
    size: tuple[int, int] = (760, 460),
) -> None:
    """A log-log chart of named ``(x, y)`` series (positive values), one colour each, written as PNG."""
    points = [p for values in series.values() for p in values if p[0] > 0 and p[1] > 0]
    x_lo, x_hi = min(p[0] for p in points), max(p[0] for p in points)
    y_lo, y_hi = min(p[1] for p in points) / 1.2, max(p[1] for p in points) * 1.2
    width, height = size
    plot_w, plot_h = width - MARGIN_LEFT - MARGIN_RIGHT, height - MARGIN_TOP - MARGIN_BOTTOM

    def to_pixel(x: float, y: float) -> tuple[float, float]:
        fx = (math.log(x) - math.log(x_lo)) / max(math.log(x_hi) - math.log(x_lo), 1e-12)
        fy = (math.log(y) - math.log(y_lo)) / max(math.log(y_hi) - math.log(y_lo), 1e-12)
        return MARGIN_LEFT + fx * plot_w, MARGIN_TOP + (1 - fy) * plot_h

    image = Image.new("RGB", size, "white")
    draw, font = ImageDraw.Draw(image), ImageFont.load_default()
    last_label = -math.inf
    for x in sorted({p[0] for p in points}):
        px, _ = to_pixel(x, y_lo)
        draw.line([(px, MARGIN_TOP), (px, MARGIN_TOP + plot_h)], fill="#e6e6e6")
        if px - last_label > 18:  # skip labels that would overlap
            draw.text((px - 6, MARGIN_TOP + plot_h + 6), f"{x:g}", fill="black", font=font)
            last_label = px
    for y in _log_ticks(y_lo, y_hi):
        _, py = to_pixel(x_lo, y)
        draw.line([(MARGIN_LEFT, py), (MARGIN_LEFT + plot_w, py)], fill="#e6e6e6")
        draw.text((8, py - 6), f"{y:g}", fill="black", font=font)
    draw.rectangle([MARGIN_LEFT, MARGIN_TOP, MARGIN_LEFT + plot_w, MARGIN_TOP + plot_h], outline="black")
    for index, (name, values) in enumerate(series.items()):
        color = COLORS[index % len(COLORS)]
        pixels = [to_pixel(x, y) for x, y in sorted(values) if x > 0 and y > 0]
        if len(pixels) > 1:
            draw.line(pixels, fill=color, width=2)
        for px, py in pixels:
            draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=color)
        legend_y = MARGIN_TOP + 16 * index
        draw.line(
            [(width - MARGIN_RIGHT + 12, legend_y + 6), (width - MARGIN_RIGHT + 32, legend_y + 6)], fill=color, width=3
        )
        draw.text((width - MARGIN_RIGHT + 38, legend_y), name, fill="black", font=font)
    draw.text((MARGIN_LEFT, 10), title, fill="black", font=font)
    draw.text((MARGIN_LEFT + plot_w // 2 - 20, height - 20), x_label, fill="black", font=font)
    draw.text((8, MARGIN_TOP - 18), y_label, fill="black", font=font)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    write_bytes_atomic(path, buffer.getvalue())
