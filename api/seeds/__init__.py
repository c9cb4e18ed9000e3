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

from api.seeds import seed000, seed001, seed002, seed003, seed004

ROUTERS: tuple[APIRouter, ...] = tuple(
    module.router for module in (seed000, seed001, seed002, seed003, seed004)
)
