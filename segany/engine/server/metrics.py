"""The metrics routes of the annotation server (what the tool's metrics page plots)."""

from __future__ import annotations

from fastapi import FastAPI

from ..store import Project

__all__ = ["add_metrics_routes"]


def add_metrics_routes(app: FastAPI, project: Project) -> None:
    """Add the metrics routes for ``project`` to ``app``."""
    del app, project
