"""events (in progress)."""

from fastapi import APIRouter

router = APIRouter(prefix="/events", tags=["events"])
