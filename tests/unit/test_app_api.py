"""Application API over HTTP (Flask test client), its storage tier in-process (real storage_api
code reached through a requests transport adapter), or scripted failures of that tier."""
from __future__ import annotations

import json
from http.client import RemoteDisconnected

import pytest
import requests
from jsonerrors import json_error as _json_error
from requests.adapters import BaseAdapter
from urllib3.exceptions import MaxRetryError, NewConnectionError, ProtocolError, ReadTimeoutError

from app_api import ConfigError, create_app

STORAGE = "http://storage.test"


class ScriptedStorage(BaseAdapter):
    """A storage tier that answers each request with ``script(request)``: a requests.Response,
    an (status, body) pair, or an exception to raise; the default forwards to ``inner``."""

    def __init__(self, script, inner=None):
        super().__init__()
        self.script = script
        self.inner = inner
        self.calls: list[tuple[str, str, bytes | None]] = []

    def send(self, request, **kwargs):
        self.calls.append((request.method, request.path_url, request.body,
                           request.headers.get("Idempotency-Key")))
        outcome = self.script(request, len(self.calls))
        if outcome is None:
            return self.inner.send(request, **kwargs)
        if isinstance(outcome, BaseException):
            raise outcome
        status, body = outcome
        resp = requests.Response()
        resp.status_code = status
        resp._content = body if isinstance(body, bytes) else json.dumps(body).encode()
        resp._content_consumed = True  # read as a stream (stream=True) from _content
        resp.headers["Content-Type"] = "application/json"
        resp.request = request
        return resp

    def close(self):
        pass


def _app_with(script, inner=None, **config):
    app = create_app({"STO_API": STORAGE, "TESTING": True, **config})
    adapter = ScriptedStorage(script, inner)
    app.extensions["storage"].session.mount(STORAGE, adapter)
    return app.test_client(), adapter


def _wsgi_adapter(api_app):
    return api_app.extensions["storage"].session.get_adapter(STORAGE)


# -- the seed's contract ---------------------------------------------------------------------
def test_seed_transcript_gives_the_seeds_answers(api_client, seed_app_transcript):
    for method, port, path, expected in seed_app_transcript:
        assert (method, port) == ("GET", 5001)
        resp = api_client.get(path)
        assert resp.status_code == 200, (path, resp.get_data(as_text=True))
        assert resp.get_json() == json.loads(expected), path
        assert resp.get_data(as_text=True).strip() == expected, path  # keys in the seed's order


def test_createlist_zero_is_empty_and_does_not_need_the_storage(api_client):
    client, adapter = _app_with(lambda req, n: AssertionError("no call expected"))
    assert client.get("/createlist/0").get_json() == {"createds": [], "deleteds": [], "faileds": []}
    assert adapter.calls == []


def test_createlist_orders_numerically_and_clear_in_storage_order(api_client):
    assert api_client.get("/createlist/12").get_json()["createds"] == [str(i) for i in range(12)]
    assert api_client.get("/clear").get_json()["deleteds"] == sorted(str(i) for i in range(12))


def test_leading_zeros_are_a_number(api_client):
    assert api_client.get("/createlist/007").get_json()["createds"] == [str(i) for i in range(7)]


# -- <number> validation -----------------------------------------------------------------------
@pytest.mark.parametrize("number", ["-1", "1.5", "abc", "1e3", "0x10", "+5", " 5", "5 ", "%205",
                                    "١٢", "٣", "1_000", "", "99999999999999999999999999999999",
                                    "100001", "9" * 5000, "NaN", "inf", "true", "null"])
def test_bad_numbers_are_a_json_400(api_client, number):
    resp = api_client.get(f"/createlist/{number}")
    if number == "":  # /createlist/ is not a route
        _json_error(resp, 404, "not_found")
        return
    body = _json_error(resp, 400, "invalid_number")
    assert body["max"] == 100000


def test_the_cap_is_configurable(storage_app):
    client = create_app({"STO_API": STORAGE, "API_MAX_ITEMS": "5"}).test_client()
    assert _json_error(client.get("/createlist/6"), 400, "invalid_number")["max"] == 5


def test_the_cap_itself_is_accepted(storage_app, wsgi_adapter):
    app = create_app({"STO_API": STORAGE, "API_MAX_ITEMS": "25", "API_BATCH_SIZE": "10"})
    app.extensions["storage"].session.mount(STORAGE, wsgi_adapter(storage_app))
    assert len(app.test_client().get("/createlist/25").get_json()["createds"]) == 25


# -- batching ----------------------------------------------------------------------------------
def test_createlist_and_clear_use_one_batch_call_per_chunk(api_app, storage_app):
    client, adapter = _app_with(lambda req, n: None, inner=_wsgi_adapter(api_app), API_BATCH_SIZE="4")
    assert client.get("/createlist/10").get_json()["createds"] == [str(i) for i in range(10)]
    assert [c[:2] for c in adapter.calls] == [("POST", "/items:batch")] * 3
    adapter.calls.clear()
    assert len(client.get("/clear").get_json()["deleteds"]) == 10
    assert [c[:2] for c in adapter.calls] == [("GET", "/items")] + [("POST", "/items:batch")] * 3


def test_seed_sized_runs_cost_one_round_trip(api_app):
    client, adapter = _app_with(lambda req, n: None, inner=_wsgi_adapter(api_app))
    client.get("/createlist/1000")
    assert len(adapter.calls) == 1
    adapter.calls.clear()
    client.get("/clear")
    assert len(adapter.calls) == 2


def test_items_failing_in_storage_are_reported_in_faileds():
    def script(req, n):
        body = json.loads(req.body)
        if "create" in body:
            return 200, {"created": ["0", "2"], "existing": [], "deleted": [], "missing": [],
                         "failed": {"1": "No space left on device"}}
        return 200, {"created": [], "existing": [], "deleted": ["0"], "missing": ["2"],
                     "failed": {"1": "Permission denied"}}

    def listing(req, n):
        return (200, {"items": ["0", "1", "2"]}) if req.method == "GET" else script(req, n)

    client, _ = _app_with(listing)
    assert client.get("/createlist/3").get_json() == {"createds": ["0", "2"], "deleteds": [], "faileds": ["1"]}
    # "2" vanished concurrently (missing): neither deleted by us nor failed
    assert client.get("/clear").get_json() == {"createds": [], "deleteds": ["0"], "faileds": ["1"]}


def test_storage_failing_halfway_lists_the_rest_in_faileds(api_app):
    refused = requests.ConnectionError(MaxRetryError(None, "/items:batch", NewConnectionError(
        None, "Failed to establish a new connection: [Errno 111] Connection refused")))

    def script(req, n):
        return refused if n == 2 else None

    client, _ = _app_with(script, inner=_wsgi_adapter(api_app), API_BATCH_SIZE="3")
    assert client.get("/createlist/8").get_json() == {
        "createds": ["0", "1", "2"], "deleteds": [], "faileds": ["3", "4", "5", "6", "7"]}


# -- the storage tier failing ------------------------------------------------------------------
REFUSED = requests.ConnectionError(MaxRetryError(None, "/items", NewConnectionError(
    None, "Failed to establish a new connection: [Errno 111] Connection refused")))
DNS = requests.ConnectionError(MaxRetryError(None, "/items", NewConnectionError(
    None, "Failed to resolve 'in-svc'")))
CONNECT_TIMEOUT = requests.ConnectTimeout("connect timed out")
READ_TIMEOUT = requests.ReadTimeout(ReadTimeoutError(None, "/items", "Read timed out. (read timeout=10)"))
READ_TIMEOUT_AFTER_RETRY = requests.ConnectionError(MaxRetryError(None, "/items", ReadTimeoutError(
    None, "/items", "Read timed out.")))
DISCONNECTED = requests.ConnectionError(ProtocolError(
    "Connection aborted.", RemoteDisconnected("Remote end closed connection without response")))


@pytest.mark.parametrize("outcome, status, error", [
    (REFUSED, 503, "storage_unreachable"),
    (DNS, 503, "storage_unreachable"),
    (CONNECT_TIMEOUT, 503, "storage_unreachable"),
    (READ_TIMEOUT, 504, "storage_timeout"),
    (READ_TIMEOUT_AFTER_RETRY, 504, "storage_timeout"),
    (DISCONNECTED, 502, "storage_bad_response"),
    (requests.exceptions.ChunkedEncodingError("broken"), 502, "storage_bad_response"),
    ((500, {"error": "internal_error"}), 502, "storage_bad_response"),
    ((503, b"<html>Service Unavailable</html>"), 502, "storage_bad_response"),
    ((404, {"error": "not_found"}), 502, "storage_bad_response"),
    ((200, b"not json at all"), 502, "storage_bad_response"),
    ((200, b""), 502, "storage_bad_response"),
    ((200, {"items": "abc"}), 502, "storage_bad_response"),
    ((200, {"items": [1, 2]}), 502, "storage_bad_response"),
    ((200, ["a", "b"]), 502, "storage_bad_response"),
    ((200, {"nothing": True}), 502, "storage_bad_response"),
])
@pytest.mark.parametrize("path", ["/createlist/5", "/clear"])
def test_storage_failures_are_json_5xx_not_500(path, outcome, status, error):
    client, _ = _app_with(lambda req, n: outcome)
    _json_error(client.get(path), status, error)


@pytest.mark.parametrize("body", [
    {"created": "0"},
    {"created": [], "failed": ["1"]},
    {"created": [0, 1]},
])
def test_malformed_batch_answers_are_502(body):
    client, _ = _app_with(lambda req, n: (200, body))
    _json_error(client.get("/createlist/2"), 502, "storage_bad_response")


def test_probes_do_not_depend_on_the_storage_tier():
    client, adapter = _app_with(lambda req, n: REFUSED)
    assert client.get("/healthz").get_json() == {"status": "ok"}
    assert client.get("/readyz").get_json() == {"status": "ready"}
    assert adapter.calls == []


@pytest.mark.parametrize("method, path, status", [
    ("GET", "/", 404), ("GET", "/items", 404), ("GET", "/createlist", 404),
    ("GET", "/createlist/1/2", 404), ("POST", "/createlist/1", 405), ("DELETE", "/clear", 405),
])
def test_routing_errors_are_json(api_client, method, path, status):
    _json_error(api_client.open(path, method=method), status)


# -- the pooled session ------------------------------------------------------------------------
def test_one_pooled_session_with_timeouts_and_safe_retries(api_app):
    client = api_app.extensions["storage"]
    assert client.session is client.session  # one session per process
    assert client.timeout == (1.0, 10.0)
    retry = requests.Session.get_adapter(client.session, "http://in-svc:5000").max_retries
    assert retry.connect == 2  # refused/unresolvable: nothing was sent, safe for every method
    assert retry.read == 0  # a read timeout is never re-sent; a dropped connection is (below)
    assert retry.status == 0 and retry.redirect == 0


def test_a_dropped_batch_is_sent_again_with_its_key_and_counts_exactly(api_app):
    """The first attempt of the second batch did all its work, then its connection dropped
    before the answer: the re-sent batch (same key, same body) reports those items as created."""
    inner = _wsgi_adapter(api_app)
    dropped = requests.ConnectionError(ProtocolError("Connection aborted.", RemoteDisconnected("gone")))

    def script(req, n):
        if n == 2:
            inner.send(req)
            return dropped
        return None

    client, adapter = _app_with(script, inner=inner, API_BATCH_SIZE="3")
    assert client.get("/createlist/8").get_json() == {
        "createds": [str(i) for i in range(8)], "deleteds": [], "faileds": []}
    keys = [c[3] for c in adapter.calls]
    assert keys[1] == keys[2] and len(set(keys)) == 3  # the re-send carried the same key


def test_every_call_carries_the_timeouts(monkeypatch):
    seen = []

    def fake_request(self, method, url, **kwargs):
        seen.append(kwargs.get("timeout"))
        raise requests.ReadTimeout("slow")

    monkeypatch.setattr(requests.Session, "request", fake_request)
    client = create_app({"STO_API": STORAGE, "API_CONNECT_TIMEOUT": "0.2",
                         "API_READ_TIMEOUT": "3"}).test_client()
    client.get("/createlist/3")
    client.get("/clear")
    assert seen == [(0.2, 3.0), (0.2, 3.0)]


# -- configuration -----------------------------------------------------------------------------
@pytest.mark.parametrize("config, message", [
    ({}, "STO_API is not set"),
    ({"STO_API": "in-svc:5000"}, "http:// or https://"),
    ({"STO_API": "ftp://in-svc"}, "http:// or https://"),
    ({"STO_API": "http://"}, "http:// or https://"),
    ({"STO_API": "http://in-svc:notaport"}, "invalid port"),
    ({"STO_API": STORAGE, "API_MAX_ITEMS": "many"}, "API_MAX_ITEMS"),
    ({"STO_API": STORAGE, "API_MAX_ITEMS": "-1"}, "API_MAX_ITEMS"),
    ({"STO_API": STORAGE, "API_BATCH_SIZE": "0"}, "API_BATCH_SIZE"),
    ({"STO_API": STORAGE, "API_READ_TIMEOUT": "0"}, "API_READ_TIMEOUT"),
    ({"STO_API": STORAGE, "API_CONNECT_TIMEOUT": "soon"}, "API_CONNECT_TIMEOUT"),
    ({"STO_API": STORAGE, "API_RETRIES": "50"}, "API_RETRIES"),
])
def test_bad_settings_are_clear_config_errors(config, message):
    with pytest.raises(ConfigError, match=message):
        create_app(config)


def test_settings_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("STO_API", "http://in-svc.default.svc.cluster.local:5000/")
    monkeypatch.setenv("API_MAX_ITEMS", "42")
    app = create_app()
    assert app.config["STO_API"] == "http://in-svc.default.svc.cluster.local:5000"
    assert app.config["API_MAX_ITEMS"] == 42


# -- safe HTTP semantics, honest reports --------------------------------------------------------
@pytest.mark.parametrize("path", ["/createlist/3", "/clear"])
def test_head_and_options_never_create_or_delete(path):
    client, adapter = _app_with(lambda req, n: AssertionError("no storage call expected"))
    head = client.head(path)
    assert head.status_code == 405 and head.headers["Allow"] == "GET, OPTIONS"
    options = client.options(path)
    assert options.status_code == 200 and options.headers["Allow"] == "GET, OPTIONS"
    assert adapter.calls == []


@pytest.mark.parametrize("path", ["/createlist//5", "/createlist/5//", "/createlist/5/", "/clear/", "/clear//"])
def test_double_slashes_are_a_json_404_never_a_redirect(api_client, path):
    resp = api_client.get(path, headers={"Host": "evil.example"})
    _json_error(resp, 404, "not_found")
    assert "Location" not in resp.headers


@pytest.mark.parametrize("number, count", [("0000000000000000003", 3), ("0" * 500 + "12", 12),
                                           ("000", 0), ("0100000", 100000)])
def test_any_number_of_leading_zeros_is_the_number(api_client, number, count):
    resp = api_client.get(f"/createlist/{number}")
    assert resp.status_code == 200, resp.get_data(as_text=True)
    assert len(resp.get_json()["createds"]) == count


def test_every_batch_carries_an_idempotency_key(api_app):
    client, adapter = _app_with(lambda req, n: None, inner=_wsgi_adapter(api_app), API_BATCH_SIZE="2")
    client.get("/createlist/5")
    keys = [c[3] for c in adapter.calls]
    assert len(keys) == 3 and len(set(keys)) == 3 and all(len(k) == 32 for k in keys)


def _batch_request(names):
    return requests.Request("POST", STORAGE + "/items:batch", json={"create": names}).prepare()


def test_the_deadline_bounds_all_calls_of_a_request_and_the_message_says_so(monkeypatch):
    import time as time_module

    clock = [1000.0]
    monkeypatch.setattr(time_module, "monotonic", lambda: clock[0])

    def answer(req, n):
        clock[0] += 4.0  # each batch takes 4 s
        body = json.loads(req.body)
        return 200, {"created": body.get("create", []), "existing": [], "deleted": [],
                     "missing": [], "failed": {}}

    client, _ = _app_with(answer, API_BATCH_SIZE="1", API_DEADLINE="10")
    resp = client.get("/createlist/5").get_json()
    assert resp["createds"] == ["0", "1", "2"]  # 3 x 4 s: the fourth would start past 10 s
    assert resp["faileds"] == ["3", "4"]
    clock[0] += 100
    client2, _ = _app_with(lambda req, n: (clock.__setitem__(0, clock[0] + 11.0), REFUSED)[1],
                           API_DEADLINE="10")
    body = _json_error(client2.get("/clear"), 504, "storage_timeout")
    assert "gave up after 11.0 s (API_DEADLINE=10 s)" in body["message"]


def test_without_a_relist_the_batch_in_flight_is_in_no_list(api_app):
    """The storage dies for good during the second batch: "3".."5" may be partly done, so they
    are neither created nor failed; "6", "7" were never sent: failed."""
    inner = _wsgi_adapter(api_app)
    dropped = requests.ConnectionError(ProtocolError("Connection aborted.", RemoteDisconnected("gone")))

    def script(req, n):
        if n == 2:
            inner.send(_batch_request(["3"]))
        return dropped if n >= 2 else None

    client, _ = _app_with(script, inner=inner, API_BATCH_SIZE="3")
    assert client.get("/createlist/8").get_json() == {
        "createds": ["0", "1", "2"], "deleteds": [], "faileds": ["6", "7"]}


@pytest.mark.parametrize("outcome", [REFUSED, DNS, READ_TIMEOUT, DISCONNECTED, (500, {"error": "x"}),
                                     (200, b"<html>oops at 10.96.0.12</html>")],
                         ids=["refused", "dns", "timeout", "dropped", "500", "not-json"])
def test_public_errors_name_no_address_and_the_log_has_the_details(outcome, caplog):
    client, _ = _app_with(lambda req, n: outcome)
    resp = client.get("/clear", headers={"X-Request-Id": "req-12345678"})
    body = resp.get_json()
    assert resp.status_code in (502, 503, 504) and body["request_id"] == "req-12345678"
    assert resp.headers["X-Request-Id"] == "req-12345678"
    for secret in ("storage.test", "10.96.0.12", "Errno", "Connection refused", "in-svc"):
        assert secret not in body["message"], body["message"]
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "req-12345678" in logged and "storage.test" in logged


def test_a_storage_answer_larger_than_the_bound_is_a_502_without_reading_it_all():
    big = {"items": [f"{i:08d}" for i in range(200_000)]}  # ~2.4 MB
    client, _ = _app_with(lambda req, n: (200, big), API_MAX_ANSWER="1048576")
    body = _json_error(client.get("/clear"), 502, "storage_bad_response")
    assert "GET /items" in body["message"]
