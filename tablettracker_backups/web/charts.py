"""A small server-rendered SVG line chart (no JavaScript, no assets from the internet)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from markupsafe import Markup, escape

from tablettracker_backups.display import human_size


@dataclass(frozen=True)
class Series:
    """One line: a label, a CSS class and (time, value) points."""

    label: str
    css_class: str
    points: Sequence[tuple[datetime, float]]


def size_chart(series: Sequence[Series], *, width: int = 640, height: int = 220) -> Markup:
    """An SVG chart of byte sizes over time; an explanatory note when there is no data."""
    points = [p for s in series for p in s.points]
    if len(points) < 1:
        return Markup('<p class="ttb-muted">No backups yet, so nothing to chart.</p>')
    # The legend sits in the top margin, above the plot, so it never covers a line.
    left, right, top, bottom = 70, 12, 30, 36
    plot_w, plot_h = width - left - right, height - top - bottom
    t0 = min(p[0] for p in points).timestamp()
    t1 = max(p[0] for p in points).timestamp()
    span = t1 - t0
    vmax = max(max(p[1] for p in points), 1.0) * 1.1

    def x(moment: datetime) -> float:
        if span <= 0:
            return left + plot_w / 2
        return left + (moment.timestamp() - t0) / span * plot_w

    def y(value: float) -> float:
        return top + plot_h - value / vmax * plot_h

    parts = [
        f'<svg class="ttb-chart" viewBox="0 0 {width} {height}" role="img" '
        f'xmlns="http://www.w3.org/2000/svg" aria-label="Stored size and database size over time">',
        f'<line class="ttb-axis" x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" '
        f'y2="{top + plot_h}"/>',
        f'<line class="ttb-axis" x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}"/>',
    ]
    for fraction in (0.0, 0.5, 1.0):
        value = vmax * fraction
        parts.append(
            f'<text class="ttb-tick" x="{left - 6}" y="{y(value) + 4:.1f}" text-anchor="end">'
            f"{escape(human_size(value))}</text>"
        )
    first, last = min(p[0] for p in points), max(p[0] for p in points)
    if span < 3600:
        # Everything within the hour (a fresh install): one label, or the two would collide.
        text = first.astimezone().strftime("%Y-%m-%d %H:%M:%S")
        if span >= 1:
            text += " to " + last.astimezone().strftime("%H:%M:%S")
        ticks = [(left + plot_w / 2, "middle", text)]
    else:
        ticks = [
            (x(first), "start", first.astimezone().strftime("%Y-%m-%d %H:%M")),
            (x(last), "end", last.astimezone().strftime("%Y-%m-%d %H:%M")),
        ]
    for position, anchor, label in ticks:
        parts.append(
            f'<text class="ttb-tick" x="{position:.1f}" y="{height - 14}" '
            f'text-anchor="{anchor}">{escape(label)}</text>'
        )
    for index, one in enumerate(series):
        ordered = sorted(one.points)
        css = escape(one.css_class)
        if len(ordered) > 1:
            coords = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in ordered)
            parts.append(f'<polyline class="ttb-line {css}" points="{coords}"/>')
        for t, v in ordered:
            parts.append(
                f'<circle class="ttb-dot {css}" cx="{x(t):.1f}" cy="{y(v):.1f}" r="3">'
                f"<title>{escape(one.label)}: {escape(human_size(v))}</title></circle>"
            )
        legend_x = left + 10 + index * 170
        parts.append(
            f'<rect class="ttb-key {css}" x="{legend_x}" y="6" width="12" height="12"/>'
            f'<text class="ttb-legend" x="{legend_x + 18}" y="16">{escape(one.label)}</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - every interpolated text is escaped above
