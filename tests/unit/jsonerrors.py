"""The assertion every Flask-test-client test of a JSON error shares."""


def json_error(resp, status: int, error: str | None = None) -> dict:
    """Assert RESP is a JSON error with STATUS (and ERROR code); return its body."""
    assert resp.status_code == status, resp.get_data(as_text=True)
    assert resp.mimetype == "application/json"
    body = resp.get_json()
    assert set(body) >= {"error", "message", "status"} and body["status"] == status
    if error:
        assert body["error"] == error
    return body
