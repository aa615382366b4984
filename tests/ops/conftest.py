"""Ops tests reuse the API fixtures: the real app on real PostgreSQL, Redis and Temporal."""

from tests.api.conftest import admin, alice, app, bob, client  # noqa: F401
