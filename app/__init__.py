"""Web layer and services. ``create_app(settings)`` is the single application factory."""
from app.factory import create_app  # noqa: F401
