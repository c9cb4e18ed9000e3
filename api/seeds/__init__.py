"""Seed-compatible routes: the REST contracts of the five backends NeuroGate grew out of.

Each module serves one seed's paths, methods, field names, status codes and error bodies, as
that seed's README documents them, over the node's own queries and services (no second data
model): ``seed000`` (``/predict``, ``/healthcheck``), ``seed001`` (accounts and scans),
``seed002`` (``/api/classify``, ``/api/classes``, ``/``), ``seed003`` (the admin and patient
portal) and ``seed004`` (``/api/predict``). Paths a seed shares with another or with the
node's own API (``/api/health``, ``/``) answer one body carrying every field each documents.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.routing import APIRoute

from api.seeds import seed000, seed001, seed002, seed003, seed003_scans, seed004
from api.seeds.common import ErrorBody

_SEEDS = (seed000, seed001, seed002, seed003, seed003_scans, seed004)
ROUTERS: tuple[APIRouter, ...] = tuple(module.router for module in _SEEDS)
# Path -> the error body of its seed, for failures answered before a route runs (a body over
# the size limit: api.limits.BodySizeLimit).
ERROR_BODIES: dict[str, ErrorBody] = {
    route.path: getattr(route, "error_body")  # noqa: B009 (set by common.seed_route)
    for router in ROUTERS
    for route in router.routes
    if isinstance(route, APIRoute) and hasattr(route, "error_body") and "{" not in route.path
}
