"""JSON plumbing shared by the services: every error as a JSON body, and the health probes.

Shared by every service package (storage_api, app_api, hello_app): one copy in
services/common, copied into each image next to the service's own package. Error bodies look like::

    {"error": "not_found", "message": "The requested URL was not found ...", "status": 404}

``error`` is a stable machine-readable code, ``message`` is for humans, ``status`` repeats the
HTTP status, ``request_id`` finds the request in the server's log (it is the client's
``X-Request-Id`` if that is a plain token, else a new one; answers carry it as that header too).
Extra keys may be added by specific errors (e.g. ``"max": 100000``). Messages never carry
internal addresses or exception text: an error's ``detail`` goes to the log, with the id.
"""
from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable

from flask import Flask, Response, g, has_request_context, jsonify, request
from werkzeug.exceptions import HTTPException, NotFound
from werkzeug.routing import RequestRedirect


class ApiError(Exception):
    """An error answer: HTTP status, machine-readable code, human message, optional extras."""

    def __init__(self, status: int, error: str, message: str, headers: dict | None = None,
                 detail: str = "", **extra):
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.headers = dict(headers or {})
        self.detail = detail  # for the log only
        self.extra = extra


_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{8,64}", re.ASCII)


def request_id() -> str:
    """This request's id: the client's ``X-Request-Id`` if it is a plain token, else a new one."""
    if not has_request_context():
        return uuid.uuid4().hex
    rid = g.get("request_id")
    if rid is None:
        sent = request.headers.get("X-Request-Id", "")
        rid = g.request_id = sent if _REQUEST_ID.fullmatch(sent) else uuid.uuid4().hex
    return rid


def error_response(status: int, error: str, message: str, headers: dict | None = None,
                   **extra) -> Response:
    resp = jsonify(error=error, message=message, status=status, request_id=request_id(), **extra)
    resp.status_code = status
    resp.headers.update(headers or {})
    return resp


def install_error_handlers(app: Flask) -> None:
    """Answer every error with JSON: our ApiError, Werkzeug's HTTP errors (routing 404/405,
    413, ...) and any unexpected exception (logged with its traceback, answered as a 500).

    Also: no redirects built from the client's ``Host`` header. Werkzeug would answer
    ``/items//abc`` with a 308 to ``http://<Host>/items/abc``; a path with an empty segment is
    simply not one of ours (a JSON 404)."""
    app.url_map.merge_slashes = False

    @app.errorhandler(ApiError)
    def _api_error(err: ApiError):
        if err.detail:
            app.logger.warning("request %s: %s: %s", request_id(), err.error, err.detail)
        return error_response(err.status, err.error, err.message, err.headers, **err.extra)

    @app.errorhandler(HTTPException)
    def _http_error(err: HTTPException):
        if isinstance(err, RequestRedirect):  # e.g. a missing trailing slash: never redirect
            err = NotFound()
        resp = err.get_response()  # keeps headers such as Allow on a 405
        code = err.code or 500
        name = (err.name or "error").lower().replace(" ", "_").replace("'", "")
        resp.data = json.dumps(
            {"error": name, "message": err.description or err.name, "status": code,
             "request_id": request_id()},
            sort_keys=True, separators=(",", ":"),
        ) + "\n"
        resp.content_type = "application/json"
        return resp

    @app.after_request
    def _tag(resp: Response):
        if "request_id" in g:  # set when an error or a call to another tier needed it
            resp.headers["X-Request-Id"] = g.request_id
        return resp

    @app.errorhandler(Exception)
    def _unexpected(err: Exception):
        app.logger.exception("request %s: unexpected error while handling it", request_id())
        return error_response(500, "internal_error", "unexpected server error (see the server log)")


def no_head(bp_or_app, *endpoints: str) -> None:
    """GET endpoints with side effects (the seed's ``/createlist``, ``/clear``) answer HEAD with a
    JSON 405 instead of doing the work: link checkers and monitors send HEAD and expect nothing
    to change. OPTIONS (Flask's automatic answer) never runs the view; its ``Allow`` header is
    corrected to leave HEAD out."""
    names = set(endpoints)

    def _endpoint() -> str:
        return (request.endpoint or "").rsplit(".", 1)[-1]

    @bp_or_app.before_request
    def _refuse_head():
        if request.method == "HEAD" and _endpoint() in names:
            raise ApiError(405, "method_not_allowed", f"HEAD is not served on {request.path}: "
                           "GET there changes the items; send GET to do it",
                           headers={"Allow": "GET, OPTIONS"})

    @bp_or_app.after_request
    def _allow_without_head(resp: Response):
        if request.method == "OPTIONS" and _endpoint() in names:
            resp.headers["Allow"] = "GET, OPTIONS"
        return resp


#: the probes answer on the server's event loop (twotier_service.rsgi), never queued behind
#: busy app threads: a long listing must not make the kubelet think the pod is dead
PROBES_ON_LOOP = (("GET", "/healthz"), ("GET", "/readyz"))


def add_probes(app: Flask, readiness: Callable[[], tuple[bool, dict]] | None = None) -> None:
    """``/healthz`` (liveness: the process answers) and ``/readyz`` (readiness: ``readiness()``
    returns (ready, details); 200 when ready, 503 with the details otherwise)."""
    app.config["SERVE_ON_LOOP"] = [*app.config.get("SERVE_ON_LOOP", ()), *PROBES_ON_LOOP]

    @app.get("/healthz")
    def healthz():
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz():
        ready, details = readiness() if readiness else (True, {})
        if ready:
            return {"status": "ready", **details}
        return error_response(503, "not_ready", "the service is not ready", **details)
