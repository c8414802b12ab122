"""The storage API's endpoints: the seed's three plus a batch operation.

  GET  /items              {"items": [sorted names]}          (PUT /items answers the same,
                                                               as the seed's route did)
  GET  /items?limit=N[&after=NAME]
                           {"items": [at most N names after NAME], "next": NAME or null}:
                           a page; ``next`` is the ``after`` of the following page
  PUT  /items/<item>       201 {"created": {"<item>": true}}  created now
                           200 {"created": {"<item>": true}}  already there (idempotent)
  DELETE /items/<item>     200 {"deleted": {"<item>": true}}  404 JSON error if missing
  POST /items:batch        {"create": [...], "delete": [...]} -> per-item outcome lists;
                           an ``Idempotency-Key`` header makes a re-sent batch report what its
                           first attempt did (see store.py); the key is bound to the body

Invalid item names get a 400 JSON error before the filesystem is touched. A batch body is
checked for its shape before it is parsed (one object, at most two lists, no more commas than
``STO_MAX_BATCH`` names need), so junk bodies cost no more memory than their bytes.
"""
from __future__ import annotations

import bisect
import errno
import hashlib
import json
import re

from flask import Blueprint, current_app, jsonify, request
from werkzeug.routing import BaseConverter

from twotier_service.jsonapi import ApiError

from .names import RULE, is_valid_name
from .store import NotAnItem, Store

bp = Blueprint("items", __name__)
#: what a client may send as Idempotency-Key (the application API sends a uuid4 in hex)
IDEMPOTENCY_KEY = re.compile(r"[A-Za-z0-9_-]{8,64}", re.ASCII)
PAGE_MAX = 10_000


class AnyNameConverter(BaseConverter):
    """Everything after ``/items/``, slashes and control characters included, so that every
    bad name reaches the allowlist (a 400 saying why) instead of falling through to a 404."""

    regex = r"[^/][\s\S]*?"
    part_isolating = False


@bp.record_once
def _register_converter(state) -> None:
    state.app.url_map.converters["anyname"] = AnyNameConverter


def _store() -> Store:
    return current_app.extensions["store"]


@bp.route("/items", methods=["GET", "PUT"])
def list_items():
    limit, after = _page_args()
    try:
        items = _store().list()
    except OSError as err:
        raise _os_error(err, "list the items") from None
    if limit is None:
        return jsonify(items=items)  # the seed's answer: every item
    start = bisect.bisect_right(items, after) if after else 0
    page = items[start:start + limit]
    more = start + limit < len(items)
    return jsonify(items=page, next=page[-1] if more and page else None)


def _page_args() -> tuple[int | None, str]:
    raw_limit, after = request.args.get("limit"), request.args.get("after", "")
    if raw_limit is None:
        if after:
            raise ApiError(400, "invalid_page", "after= needs limit= (e.g. ?limit=1000&after=x)")
        return None, ""
    if not raw_limit.isascii() or not raw_limit.isdigit() or not 1 <= int(raw_limit) <= PAGE_MAX:
        raise ApiError(400, "invalid_page", f"limit must be an integer from 1 to {PAGE_MAX}, "
                       f"got {raw_limit[:20]!r}", max=PAGE_MAX)
    if after and not is_valid_name(after):
        raise ApiError(400, "invalid_page", f"after must be an item name ({RULE})")
    return int(raw_limit), after


@bp.put("/items/<anyname:item>")
def create_item(item: str):
    _check_name(item)
    try:
        created = _store().create(item)
    except NotAnItem:
        raise ApiError(409, "not_an_item", f"{item!r} exists in the storage directory and is not "
                       "an item (a directory or a link); remove it by hand") from None
    except OSError as err:
        raise _os_error(err, f"create item {item!r}") from None
    resp = jsonify(created={item: True})
    resp.status_code = 201 if created else 200
    return resp


@bp.delete("/items/<anyname:item>")
def delete_item(item: str):
    _check_name(item)
    try:
        deleted = _store().delete(item)
    except OSError as err:
        raise _os_error(err, f"delete item {item!r}") from None
    if not deleted:
        raise ApiError(404, "item_not_found", f"there is no item {item!r}")
    return jsonify(deleted={item: True})


@bp.post("/items:batch")
def batch():
    idem_key = request.headers.get("Idempotency-Key")
    if idem_key is not None and not IDEMPOTENCY_KEY.fullmatch(idem_key):
        raise ApiError(400, "invalid_idempotency_key", "Idempotency-Key must be 8 to 64 "
                       "characters from A-Z a-z 0-9 _ - (e.g. a uuid4 in hex)")
    limit = current_app.config["STO_MAX_BATCH"]
    data = request.get_data(cache=False)
    body = _json_body(data, limit)
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_body", 'expected a JSON object such as '
                       '{"create": ["a", "b"]} or {"delete": ["a"]}')
    unknown = sorted(set(body) - {"create", "delete"})
    if unknown:
        raise ApiError(400, "invalid_body", f"unknown keys {unknown}: only \"create\" and "
                       "\"delete\" are accepted")
    create, delete = body.get("create", []), body.get("delete", [])
    for key, names in (("create", create), ("delete", delete)):
        if not isinstance(names, list):
            raise ApiError(400, "invalid_body", f'"{key}" must be a list of item names')
    if len(create) + len(delete) > limit:
        raise ApiError(400, "batch_too_large", f"a batch may name at most {limit} items, got "
                       f"{len(create) + len(delete)}: split it", max=limit)
    invalid = [name for name in (*create, *delete) if not is_valid_name(name)]
    if invalid:
        raise ApiError(400, "invalid_item_name", f"invalid item names (allowed: {RULE})",
                       invalid=[_shown(n) for n in invalid[:10]])
    # the record is the key *and* this body: a key reused with another batch is another record
    record = f"{idem_key}-{hashlib.sha256(data).hexdigest()[:16]}" if idem_key else None
    try:
        result = _store().batch(create=create, delete=delete, key=record)
    except OSError as err:  # the directory itself failed (e.g. the temporary file)
        raise _os_error(err, "run the batch") from None
    return jsonify(result.as_dict())


def _json_body(data: bytes, limit: int):
    """The request body as JSON, or None when it is not JSON we can take: not the shape of a
    batch (checked on the bytes, before any parsing: nested or long lists of junk would cost
    many times their size in memory), invalid JSON, not UTF-8."""
    if data.count(b"{") > 1 or data.count(b"[") > 2:
        return None
    if data.count(b",") > limit + 1:
        raise ApiError(400, "batch_too_large", f"a batch may name at most {limit} items: "
                       "split it", max=limit)
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return None


def _check_name(item: str) -> None:
    if not is_valid_name(item):
        raise ApiError(400, "invalid_item_name", f"invalid item name {_shown(item)!r}: use {RULE}")


def _shown(name: object) -> str:
    text = name if isinstance(name, str) else repr(name)
    return text if len(text) <= 80 else text[:77] + "..."


def _os_error(err: OSError, action: str) -> ApiError:
    current_app.logger.error("cannot %s: %s", action, err)
    reason = err.strerror or str(err)
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return ApiError(507, "insufficient_storage", f"cannot {action}: {reason}")
    return ApiError(503, "storage_unavailable", f"cannot {action}: {reason}")
