"""JSON plumbing shared by the services: every error as a JSON body, and the health probes.

Shared by every service package (storage_api, app_api, hello_app): one copy in
services/common, copied into each image next to the service's own package. Error bodies look like::

    {"error": "not_found", "message": "The requested URL was not found ...", "status": 404}

``error`` is a stable machine-readable code, ``message`` is for humans, ``status`` repeats the
HTTP status. Extra keys may be added by specific errors (e.g. ``"max": 100000``).
"""
from __future__ import annotations

import json
from collections.abc import Callable

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException


class ApiError(Exception):
    """An error answer: HTTP status, machine-readable code, human message, optional extras."""

    def __init__(self, status: int, error: str, message: str, **extra):
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.extra = extra


def error_response(status: int, error: str, message: str, **extra) -> Response:
    resp = jsonify(error=error, message=message, status=status, **extra)
    resp.status_code = status
    return resp


def install_error_handlers(app: Flask) -> None:
    """Answer every error with JSON: our ApiError, Werkzeug's HTTP errors (routing 404/405,
    413, ...) and any unexpected exception (logged with its traceback, answered as a 500)."""

    @app.errorhandler(ApiError)
    def _api_error(err: ApiError):
        return error_response(err.status, err.error, err.message, **err.extra)

    @app.errorhandler(HTTPException)
    def _http_error(err: HTTPException):
        resp = err.get_response()  # keeps headers such as Allow on a 405
        code = err.code or 500
        name = (err.name or "error").lower().replace(" ", "_").replace("'", "")
        resp.data = json.dumps(
            {"error": name, "message": err.description or err.name, "status": code},
            sort_keys=True, separators=(",", ":"),
        ) + "\n"
        resp.content_type = "application/json"
        return resp

    @app.errorhandler(Exception)
    def _unexpected(err: Exception):
        app.logger.exception("unexpected error while handling the request")
        return error_response(500, "internal_error", "unexpected server error (see the server log)")


def add_probes(app: Flask, readiness: Callable[[], tuple[bool, dict]] | None = None) -> None:
    """``/healthz`` (liveness: the process answers) and ``/readyz`` (readiness: ``readiness()``
    returns (ready, details); 200 when ready, 503 with the details otherwise)."""

    @app.get("/healthz")
    def healthz():
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz():
        ready, details = readiness() if readiness else (True, {})
        if ready:
            return {"status": "ready", **details}
        return error_response(503, "not_ready", "the service is not ready", **details)
