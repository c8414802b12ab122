"""The seed's Step 1 app (hello_app)."""
from __future__ import annotations

import pytest


@pytest.mark.parametrize("path, body, text", [
    ("/", {"a": 1}, '{"a":1}'),
    ("/info", {"info": True}, '{"info":true}'),
])
def test_seed_answers(hello_client, path, body, text):
    resp = hello_client.get(path)
    assert resp.status_code == 200 and resp.mimetype == "application/json"
    assert resp.get_json() == body
    assert resp.get_data(as_text=True).strip() == text


def test_probes(hello_client):
    assert hello_client.get("/healthz").get_json() == {"status": "ok"}
    assert hello_client.get("/readyz").get_json() == {"status": "ready"}


@pytest.mark.parametrize("method, path, status", [("GET", "/nope", 404), ("POST", "/", 405),
                                                  ("DELETE", "/info", 405)])
def test_errors_are_json(hello_client, method, path, status):
    resp = hello_client.open(path, method=method)
    assert resp.status_code == status and resp.mimetype == "application/json"
    assert resp.get_json()["status"] == status
