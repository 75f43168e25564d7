"""The HTTP API (FastAPI). Run it with ``uvicorn api.app:create_app --factory``."""
