"""The /predict resource."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/predict", tags=["predict"])
