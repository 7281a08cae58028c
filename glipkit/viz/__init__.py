"""Seeing labels: boxes drawn on images (`predict --draw`), the HTML gallery (`show`), the report page."""

from glipkit.viz.draw import draw_detections, drawn_names

__all__ = ["draw_detections", "drawn_names"]
