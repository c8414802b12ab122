"""The uvicorn candidate of the server benchmark (twotier.bench.servers): a service's Flask app
behind a2wsgi's WSGI-to-ASGI adapter. ``BENCH_PACKAGE`` names the service package."""
from __future__ import annotations

import importlib
import os


def asgi_app():
    from a2wsgi import WSGIMiddleware

    package = importlib.import_module(os.environ["BENCH_PACKAGE"])
    return WSGIMiddleware(package.create_app(), workers=int(os.environ.get("BENCH_THREADS", "4")))
