"""Seed 003 (the admin and patient portal)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(tags=["seed 003"])
