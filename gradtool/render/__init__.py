"""Results -> rich tables and matplotlib figures. Formatting only: nothing here computes a
statistic or imports torch; every number shown was computed by `gradtool.analysis`."""

from gradtool.render.affinity import render_affinity
from gradtool.render.common import make_console
from gradtool.render.report import render_report
from gradtool.render.timeline import render_timeline

__all__ = ["make_console", "render_affinity", "render_report", "render_timeline"]
