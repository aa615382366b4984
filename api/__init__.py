"""The control/business-plane REST API (FastAPI)."""
