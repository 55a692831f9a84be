"""A small server-rendered SVG line chart (no JavaScript, no assets from the internet)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

from markupsafe import Markup, escape

from tablettracker_backups.display import human_size


@dataclass(frozen=True)
class Series:
    """One line: a label, a CSS class and (time, value) points."""

    label: str
    css_class: str
    points: Sequence[tuple[datetime, float]]


#: More points than this per line are thinned out: a 480-unit-wide plot cannot show them, and
#: a page with 1,000 backups must not grow with every one of them.
MAX_POINTS = 120
#: Dots are drawn only up to this many points; beyond, the line alone reads better.
MAX_DOTS = 60


def thin(
    points: Sequence[tuple[datetime, float]], limit: int = MAX_POINTS
) -> list[tuple[datetime, float]]:
    """At most ``limit`` points, in time order: the largest value of each of ``limit`` equal
    runs (so a spike stays visible), the newest point always included."""
    ordered = sorted(points)
    if len(ordered) <= limit:
        return ordered
    size = len(ordered) / limit
    runs = [ordered[int(i * size) : int((i + 1) * size)] for i in range(limit)]
    kept = [max(run, key=lambda p: p[1]) for run in runs if run]
    if kept[-1] != ordered[-1]:
        kept[-1] = ordered[-1]
    return kept


def _utc(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def size_chart(
    series: Sequence[Series],
    *,
    label: Callable[[datetime], str],
    width: int = 480,
    height: int = 200,
) -> Markup:
    """An SVG chart of byte sizes over time; an explanatory note when there is no data.

    ``label`` writes a moment for the time axis (the pages' one time format); each label also
    carries its UTC time in ``data-ttb-utc``, so the pages' script can show the browser's zone,
    as it does for every other time.
    """
    lines = [Series(s.label, s.css_class, thin(s.points)) for s in series]
    points = [p for s in lines for p in s.points]
    if len(points) < 1:
        return Markup('<p class="ttb-muted">No backups yet, so nothing to chart.</p>')
    # The legend sits in the top margin, above the plot, so it never covers a line.
    left, right, top, bottom = 64, 14, 30, 34
    plot_w, plot_h = width - left - right, height - top - bottom
    first, last = min(p[0] for p in points), max(p[0] for p in points)
    t0, span = first.timestamp(), last.timestamp() - first.timestamp()
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
    # Everything within the hour (a fresh install): one label, or the two would collide.
    ticks = (
        [(left, "start", first)]
        if span < 3600
        else [(left, "start", first), (left + plot_w, "end", last)]
    )
    for position, anchor, moment in ticks:
        parts.append(
            f'<text class="ttb-tick" x="{position:.1f}" y="{height - 12}" text-anchor="{anchor}" '
            f'data-ttb-utc="{_utc(moment)}">{escape(label(moment))}</text>'
        )
    for index, one in enumerate(lines):
        css = escape(one.css_class)
        if len(one.points) > 1:
            coords = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in one.points)
            parts.append(f'<polyline class="ttb-line {css}" points="{coords}"/>')
        if len(one.points) <= MAX_DOTS:
            for t, v in one.points:
                parts.append(
                    f'<circle class="ttb-dot {css}" cx="{x(t):.1f}" cy="{y(v):.1f}" r="3">'
                    f"<title>{escape(one.label)}: {escape(human_size(v))}, "
                    f"{escape(label(t))}</title></circle>"
                )
        legend_x = left + index * 170
        parts.append(
            f'<rect class="ttb-key {css}" x="{legend_x}" y="6" width="12" height="12"/>'
            f'<text class="ttb-legend" x="{legend_x + 18}" y="16">{escape(one.label)}</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - every interpolated text is escaped above
