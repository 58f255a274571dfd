"""Web layer and services. ``create_app(settings)`` is the single application factory."""


def __getattr__(name):
    # Lazy, so that workers and the CLI do not load Flask and the web layer.
    if name == "create_app":
        from app.web.factory import create_app

        return create_app
    raise AttributeError(name)
