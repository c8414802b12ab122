"""Storage API over HTTP (Flask test client, a fresh tmp_path directory per test)."""
from __future__ import annotations

import json
import os

import pytest
from jsonerrors import json_error as _json_error

from storage_api import ConfigError, create_app


def _files(directory) -> list[str]:
    return sorted(os.listdir(directory))


# -- the seed's contract ---------------------------------------------------------------------
def test_seed_transcript_gives_the_seeds_answers(storage_client, seed_storage_transcript):
    for method, port, path, expected in seed_storage_transcript:
        assert port == 5000
        resp = storage_client.open(path, method=method)
        assert resp.status_code in (200, 201), (method, path, resp.status_code)
        assert resp.get_json() == json.loads(expected), (method, path)
        assert resp.get_data(as_text=True).strip() == expected, (method, path)  # exact text


def test_items_are_files_with_the_seeds_content(storage_client, storage_dir):
    assert storage_client.put("/items/FromFirst").status_code == 201
    assert (storage_dir / "FromFirst").read_text() == "x"
    assert _files(storage_dir) == ["FromFirst"]  # no temporary file left behind


def test_put_on_items_lists_like_the_seed(storage_client):
    storage_client.put("/items/b")
    storage_client.put("/items/a")
    assert storage_client.put("/items").get_json() == {"items": ["a", "b"]}


def test_list_is_sorted_like_pythons_sorted(storage_client):
    for name in ["10", "2", "1", "B", "a", "_z"]:
        storage_client.put(f"/items/{name}")
    assert storage_client.get("/items").get_json()["items"] == sorted(["10", "2", "1", "B", "a", "_z"])


# -- HTTP semantics --------------------------------------------------------------------------
def test_create_is_201_then_idempotent_200_with_the_same_body(storage_client, storage_dir):
    first = storage_client.put("/items/xyz")
    again = storage_client.put("/items/xyz")
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.get_json() == again.get_json() == {"created": {"xyz": True}}
    assert _files(storage_dir) == ["xyz"]


def test_delete_missing_item_is_a_json_404(storage_client):
    _json_error(storage_client.delete("/items/nothing"), 404, "item_not_found")


def test_delete_twice_is_200_then_404(storage_client):
    storage_client.put("/items/abc")
    assert storage_client.delete("/items/abc").status_code == 200
    _json_error(storage_client.delete("/items/abc"), 404, "item_not_found")


@pytest.mark.parametrize("method, path, status, error", [
    ("GET", "/nope", 404, "not_found"),
    ("GET", "/", 404, "not_found"),
    ("GET", "/items/", 404, "not_found"),
    ("POST", "/items", 405, "method_not_allowed"),
    ("GET", "/items/abc", 405, "method_not_allowed"),
    ("DELETE", "/items", 405, "method_not_allowed"),
    ("GET", "/items:batch", 405, "method_not_allowed"),
])
def test_routing_errors_are_json(storage_client, method, path, status, error):
    resp = storage_client.open(path, method=method)
    _json_error(resp, status, error)
    if status == 405:
        assert "Allow" in resp.headers


# -- item names: the allowlist -----------------------------------------------------------------
BAD_NAMES = [
    ".", "..", ".hidden", ".sto-tmp-123", "a/b", "../etc", "..%2Fescape", "a%2Fb", "a\\b",
    "%00", "a%00b", "a%0Ab", "a%0Db", "tab%09", "%7F", " lead", "trail ", "a b", "-rf", "x" * 129,
    "caf%C3%A9", "%EF%BC%A1",  # e-acute, fullwidth A
    "a*", "a%3Fb", "a%23b", "a:b", "a;b", "a|b", "$HOME", "~", "a%25b",
]


@pytest.mark.parametrize("name", BAD_NAMES)
@pytest.mark.parametrize("method", ["PUT", "DELETE"])
def test_bad_item_names_are_rejected_before_touching_the_filesystem(
        storage_client, storage_dir, tmp_path, method, name):
    before = sorted(p.name for p in tmp_path.iterdir())
    resp = storage_client.open(f"/items/{name}", method=method)
    _json_error(resp, 400, "invalid_item_name")
    assert _files(storage_dir) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.parametrize("name", ["0", "99999", "abc", "FromFirst", "a.b", "a-b", "_x", "x.py",
                                  "A" * 128, "trailing.", "a..b"])
def test_good_item_names_are_accepted(storage_client, storage_dir, name):
    assert storage_client.put(f"/items/{name}").status_code == 201
    assert _files(storage_dir) == [name]
    assert storage_client.delete(f"/items/{name}").get_json() == {"deleted": {name: True}}


def test_only_items_are_listed(storage_client, storage_dir, tmp_path):
    (storage_dir / "real").write_text("x")
    (storage_dir / ".sto-tmp-999-abc").write_text("x")  # an in-flight temporary file
    (storage_dir / "lost+found").mkdir()
    (storage_dir / "a dir").mkdir()
    (storage_dir / "subdir").mkdir()
    (storage_dir / "bad name").write_text("x")
    outside = tmp_path / "outside"
    outside.write_text("secret")
    (storage_dir / "link").symlink_to(outside)
    assert storage_client.get("/items").get_json() == {"items": ["real"]}


def test_names_that_are_not_items_are_left_alone(storage_client, storage_dir, tmp_path):
    (storage_dir / "subdir").mkdir()
    outside = tmp_path / "outside"
    outside.write_text("secret")
    (storage_dir / "link").symlink_to(outside)
    _json_error(storage_client.put("/items/subdir"), 409, "not_an_item")
    _json_error(storage_client.put("/items/link"), 409, "not_an_item")
    _json_error(storage_client.delete("/items/subdir"), 404, "item_not_found")
    _json_error(storage_client.delete("/items/link"), 404, "item_not_found")
    assert (storage_dir / "subdir").is_dir() and (storage_dir / "link").is_symlink()
    assert outside.read_text() == "secret"


# -- batch -------------------------------------------------------------------------------------
def test_batch_creates_and_deletes_with_per_item_outcomes(storage_client, storage_dir):
    storage_client.put("/items/old")
    resp = storage_client.post("/items:batch", json={"create": ["2", "old", "1"], "delete": ["old", "gone"]})
    assert resp.status_code == 200
    assert resp.get_json() == {"created": ["2", "1"], "existing": ["old"], "deleted": ["old"],
                               "missing": ["gone"], "failed": {}}
    assert _files(storage_dir) == ["1", "2"]


def test_batch_of_many_items_leaves_no_temporary_file(storage_client, storage_dir):
    names = [str(i) for i in range(2000)]
    body = storage_client.post("/items:batch", json={"create": names}).get_json()
    assert body["created"] == names and not body["failed"]
    assert _files(storage_dir) == sorted(names)
    assert all((storage_dir / n).read_text() == "x" for n in ("0", "1999"))
    body = storage_client.post("/items:batch", json={"delete": names}).get_json()
    assert body["deleted"] == names
    assert _files(storage_dir) == []


def test_empty_batch_is_a_no_op(storage_client):
    assert storage_client.post("/items:batch", json={}).get_json() == {
        "created": [], "existing": [], "deleted": [], "missing": [], "failed": {}}


@pytest.mark.parametrize("body, error", [
    ("not json", "invalid_body"),
    ("[]", "invalid_body"),
    ('"create"', "invalid_body"),
    ('{"create": "abc"}', "invalid_body"),
    ('{"delete": {"a": 1}}', "invalid_body"),
    ('{"create": ["a"], "drop": ["b"]}', "invalid_body"),
    ('{"create": ["ok", "../x"]}', "invalid_item_name"),
    ('{"create": ["ok", 5]}', "invalid_item_name"),
    ('{"delete": [null]}', "invalid_item_name"),
])
def test_bad_batches_are_rejected_and_change_nothing(storage_client, storage_dir, body, error):
    resp = storage_client.post("/items:batch", data=body, content_type="application/json")
    _json_error(resp, 400, error)
    assert _files(storage_dir) == []


def test_batch_size_and_body_size_are_capped(storage_dir):
    client = create_app({"STO_STORAGE": str(storage_dir), "STO_MAX_BATCH": "3",
                         "STO_MAX_BODY": "2048"}).test_client()
    body = _json_error(client.post("/items:batch", json={"create": ["a", "b", "c", "d"]}), 400,
                       "batch_too_large")
    assert body["max"] == 3
    _json_error(client.post("/items:batch", json={"create": ["a" * 100] * 30}), 413)
    assert _files(storage_dir) == []


# -- failures of the filesystem ----------------------------------------------------------------
def test_vanished_directory_is_a_json_503_and_not_ready(storage_client, storage_dir):
    os.rmdir(storage_dir)
    _json_error(storage_client.get("/items"), 503, "storage_unavailable")
    _json_error(storage_client.put("/items/a"), 503, "storage_unavailable")
    _json_error(storage_client.post("/items:batch", json={"create": ["a"]}), 503)
    _json_error(storage_client.get("/readyz"), 503, "not_ready")
    assert storage_client.get("/healthz").get_json() == {"status": "ok"}


def test_full_disk_is_a_json_507(storage_client, storage_app, monkeypatch):
    import errno

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(storage_app.extensions["store"], "create", full)
    _json_error(storage_client.put("/items/a"), 507, "insufficient_storage")


def test_unexpected_exception_is_a_json_500(storage_client, storage_app, monkeypatch):
    def boom():
        raise RuntimeError("boom")

    monkeypatch.setattr(storage_app.extensions["store"], "list", boom)
    storage_app.testing = False  # behave as in production: the handler answers
    _json_error(storage_client.get("/items"), 500, "internal_error")


# -- probes and configuration ------------------------------------------------------------------
def test_probes(storage_client):
    assert storage_client.get("/healthz").get_json() == {"status": "ok"}
    assert storage_client.get("/readyz").get_json() == {"status": "ready"}


def test_missing_storage_setting_is_a_clear_config_error():
    with pytest.raises(ConfigError, match="STO_STORAGE is not set"):
        create_app({})


def test_storage_path_that_is_a_file_is_a_config_error(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="not a directory"):
        create_app({"STO_STORAGE": str(tmp_path / "file")})


def test_missing_storage_directory_is_created(tmp_path):
    app = create_app({"STO_STORAGE": str(tmp_path / "new" / "dir")})
    assert (tmp_path / "new" / "dir").is_dir()
    assert app.test_client().get("/items").get_json() == {"items": []}


@pytest.mark.parametrize("key, value", [("STO_MAX_BATCH", "lots"), ("STO_MAX_BATCH", "0"),
                                        ("STO_MAX_BODY", "-1")])
def test_invalid_numeric_settings_are_config_errors(tmp_path, key, value):
    with pytest.raises(ConfigError, match=key):
        create_app({"STO_STORAGE": str(tmp_path), key: value})


def test_settings_come_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("STO_STORAGE", str(tmp_path))
    monkeypatch.setenv("STO_MAX_BATCH", "7")
    app = create_app()
    assert app.config["STO_STORAGE"] == str(tmp_path) and app.config["STO_MAX_BATCH"] == 7


@pytest.mark.parametrize("body", [
    b"[" * 1500 + b"]" * 1500,                      # deeper than the parser's recursion limit
    b'{"create": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    b'{"create": [' + b"9" * 5000 + b"]}",           # more digits than int() converts
    b"\xff\xfe\x00garbage",                          # not UTF-8
])
def test_pathological_json_is_a_400(storage_client, storage_dir, body):
    _json_error(storage_client.post("/items:batch", data=body), 400, "invalid_body")
    assert os.listdir(storage_dir) == []


@pytest.mark.parametrize("path, status", [("/items//abc", 404), ("/items//", 404), ("/items/", 404),
                                          ("/items/abc/", 400), ("/items/a//b", 400)])
def test_double_slashes_are_json_errors_never_a_redirect(storage_client, path, status):
    resp = storage_client.put(path, headers={"Host": "evil.example"})
    _json_error(resp, status)
    assert "Location" not in resp.headers


def test_a_resent_batch_with_its_key_counts_the_first_attempt(storage_client):
    headers = {"Idempotency-Key": "0123456789abcdef"}
    body = {"create": ["a", "b"]}
    assert storage_client.post("/items:batch", json=body, headers=headers).get_json()["created"] == ["a", "b"]
    again = storage_client.post("/items:batch", json=body, headers=headers).get_json()
    assert (again["created"], again["existing"]) == (["a", "b"], [])
    without = storage_client.post("/items:batch", json=body).get_json()
    assert (without["created"], without["existing"]) == ([], ["a", "b"])


def test_a_bad_idempotency_key_is_a_400(storage_client, storage_dir):
    resp = storage_client.post("/items:batch", json={"create": ["a"]}, headers={"Idempotency-Key": "x/y"})
    _json_error(resp, 400, "invalid_idempotency_key")
    assert os.listdir(storage_dir) == []


@pytest.mark.parametrize("method", ["HEAD", "OPTIONS"])
def test_head_and_options_change_nothing(storage_client, storage_dir, method):
    for path in ("/items/a", "/items:batch", "/items"):
        storage_client.open(path, method=method)
    assert os.listdir(storage_dir) == []


def test_a_key_reused_with_another_body_reports_nothing_it_did_not_do(storage_client):
    headers = {"Idempotency-Key": "0123456789abcdef"}
    storage_client.post("/items:batch", json={"create": ["a"]}, headers=headers)
    other = storage_client.post("/items:batch", json={"create": ["a", "b"]}, headers=headers).get_json()
    assert (other["created"], other["existing"]) == (["b"], ["a"])


@pytest.mark.parametrize("body", [
    b'{"create": [' + b'{},' * 30000 + b'{}]}',          # many objects
    b'{"create": [' + b'[],' * 30000 + b'[]]}',          # many lists
    b'{"create": ["a"], "delete": ["b"], "x": [[1]]}',   # a third list
], ids=["objects", "lists", "third-list"])
def test_junk_shaped_bodies_are_refused_before_parsing(storage_client, storage_dir, body, monkeypatch):
    import types

    import storage_api.routes as routes

    def parse(data):
        raise AssertionError("junk reached the parser")

    monkeypatch.setattr(routes, "json", types.SimpleNamespace(loads=parse))
    _json_error(storage_client.post("/items:batch", data=body, content_type="application/json"),
                400, "invalid_body")
    assert os.listdir(storage_dir) == []


def test_more_commas_than_names_allowed_is_too_large_before_parsing(storage_dir):
    app = create_app({"STO_STORAGE": str(storage_dir), "STO_MAX_BATCH": "10"})
    body = json.dumps({"create": [0] * 20}).encode()
    _json_error(app.test_client().post("/items:batch", data=body, content_type="application/json"),
                400, "batch_too_large")


def test_the_default_limits_fit_what_the_application_api_sends(storage_client):
    names = [f"{i:0128d}"[-128:] for i in range(10_000)]  # 10,000 names of the longest kind
    resp = storage_client.post("/items:batch", json={"create": names})
    assert resp.status_code == 200 and len(resp.get_json()["created"]) == 10_000
    _json_error(storage_client.post("/items:batch", json={"create": names + ["x"]}), 400, "batch_too_large")


def test_items_can_be_listed_in_pages_and_whole_as_the_seed_does(storage_client):
    names = sorted(str(i) for i in range(25))
    storage_client.post("/items:batch", json={"create": names})
    pages, after = [], ""
    while True:
        page = storage_client.get(f"/items?limit=10&after={after}").get_json()
        pages.append(page["items"])
        if page["next"] is None:
            break
        after = page["next"]
    assert [len(p) for p in pages] == [10, 10, 5]
    assert sum(pages, []) == names == storage_client.get("/items").get_json()["items"]


@pytest.mark.parametrize("query", ["limit=0", "limit=x", "limit=10001", "after=a", "limit=5&after=../x"])
def test_bad_page_arguments_are_a_json_400(storage_client, query):
    _json_error(storage_client.get(f"/items?{query}"), 400, "invalid_page")
