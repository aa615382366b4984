"""usage (in progress)."""

from fastapi import APIRouter

router = APIRouter(prefix="/usage", tags=["usage"])
