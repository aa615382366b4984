"""metrics (in progress)."""

from fastapi import APIRouter

router = APIRouter(prefix="/metrics", tags=["metrics"])
