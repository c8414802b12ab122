"""Both services as real processes (granian) on loopback: the seed's transcripts run verbatim
with curl, the bad-input table over raw HTTP, and the request log line."""
from __future__ import annotations

import http.client
import json
import shutil
import subprocess

import pytest


def _curl(line_method: str, url: str) -> str:
    curl = shutil.which("curl")
    assert curl, "curl is needed to replay the seed's transcripts: apt-get install -y curl"
    argv = [curl, "-s"] + ([f"-X{line_method}"] if line_method != "GET" else []) + [url]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True).stdout


def _raw(url: str, method: str, path: str) -> tuple[int, str, dict]:
    """One request with the path sent exactly as given (no client-side normalisation)."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        conn.endheaders()
        resp = conn.getresponse()
        body = resp.read().decode()
        return resp.status, resp.getheader("Content-Type"), json.loads(body)
    finally:
        conn.close()


def test_seed_storage_transcript_verbatim_with_curl(empty_live_storage, seed_storage_transcript):
    for method, _port, path, expected in seed_storage_transcript:
        out = _curl(method, f"localhost:{empty_live_storage.port}{path}")
        assert out.strip() == expected, (method, path)
        assert json.loads(out) == json.loads(expected)


def test_seed_app_transcript_verbatim_with_curl(live_app, empty_live_storage, seed_app_transcript):
    for method, _port, path, expected in seed_app_transcript:
        out = _curl(method, f"localhost:{live_app.port}{path}")
        assert out.strip() == expected, path
        assert json.loads(out) == json.loads(expected)


STORAGE_BAD_INPUT = [
    ("PUT", "/items/..", 400, "invalid_item_name"),
    ("PUT", "/items/.", 400, "invalid_item_name"),
    ("PUT", "/items/../../etc/passwd", 400, "invalid_item_name"),
    ("DELETE", "/items/../storage", 400, "invalid_item_name"),
    ("PUT", "/items/%2e%2e", 400, "invalid_item_name"),
    ("PUT", "/items/a%2Fb", 400, "invalid_item_name"),
    ("PUT", "/items/a%00b", 400, "invalid_item_name"),
    ("PUT", "/items/a%0Ab", 400, "invalid_item_name"),
    ("PUT", "/items/.hidden", 400, "invalid_item_name"),
    ("PUT", "/items/" + "x" * 300, 400, "invalid_item_name"),
    ("PUT", "/items/caf%C3%A9", 400, "invalid_item_name"),
    ("PUT", "/items/%FF%FE", 400, "invalid_item_name"),
    ("DELETE", "/items/not-there", 404, "item_not_found"),
    ("GET", "/items/abc", 405, "method_not_allowed"),
    ("POST", "/items", 405, "method_not_allowed"),
    ("GET", "/nothing/here", 404, "not_found"),
]


@pytest.mark.parametrize("method, path, status, error", STORAGE_BAD_INPUT)
def test_storage_bad_input_table(live_storage, tmp_path_factory, method, path, status, error):
    parent = live_storage.storage_dir.parent
    before = sorted(p.name for p in parent.iterdir())
    got_status, content_type, body = _raw(live_storage.url, method, path)
    assert (got_status, body["error"]) == (status, error), body
    assert content_type == "application/json" and body["status"] == status
    assert sorted(p.name for p in parent.iterdir()) == before  # nothing created beside it
    # no temporary file left (idempotency records of earlier batches, in .sto-idem/, may be)
    assert not any(p.name.startswith(".sto-tmp-") for p in live_storage.storage_dir.iterdir())


APP_BAD_INPUT = [
    ("/createlist/-1", 400, "invalid_number"),
    ("/createlist/1.5", 400, "invalid_number"),
    ("/createlist/abc", 400, "invalid_number"),
    ("/createlist/1e9", 400, "invalid_number"),
    ("/createlist/100001", 400, "invalid_number"),
    ("/createlist/" + "9" * 400, 400, "invalid_number"),
    ("/createlist/%D9%A3", 400, "invalid_number"),
    ("/createlist/%205", 400, "invalid_number"),
    ("/createlist/", 404, "not_found"),
    ("/createlist/3/4", 404, "not_found"),
]


@pytest.mark.parametrize("path, status, error", APP_BAD_INPUT)
def test_app_bad_input_table(live_app, path, status, error):
    got_status, content_type, body = _raw(live_app.url, "GET", path)
    assert (got_status, body["error"]) == (status, error), body
    assert content_type == "application/json"


def test_every_request_gets_a_log_line_on_stdout(live_storage):
    _raw(live_storage.url, "GET", "/items?log-line-marker")
    from twotier.poll import Timeout, poll

    try:
        poll(lambda: any('"GET /items?log-line-marker HTTP/1.1" 200' in line for line in live_storage.output),
             timeout=60, interval=0.1, what="the request's access-log line")
    except Timeout:
        pytest.fail("no access-log line for the request; output:\n" + "".join(live_storage.output))
