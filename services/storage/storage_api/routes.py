"""The storage API's endpoints: the seed's three plus a batch operation.

  GET  /items              {"items": [sorted names]}          (PUT /items answers the same,
                                                               as the seed's route did)
  PUT  /items/<item>       201 {"created": {"<item>": true}}  created now
                           200 {"created": {"<item>": true}}  already there (idempotent)
  DELETE /items/<item>     200 {"deleted": {"<item>": true}}  404 JSON error if missing
  POST /items:batch        {"create": [...], "delete": [...]} -> per-item outcome lists;
                           an ``Idempotency-Key`` header makes a re-sent batch report what its
                           first attempt created as ``created`` (see store.py)

Invalid item names get a 400 JSON error before the filesystem is touched.
"""
from __future__ import annotations

import errno
import json

from flask import Blueprint, current_app, jsonify, request
from werkzeug.routing import BaseConverter

from twotier_service.jsonapi import ApiError

from .names import RULE, is_valid_name
from .store import KEY_PATTERN, NotAnItem, Store

bp = Blueprint("items", __name__)


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
    try:
        return jsonify(items=_store().list())
    except OSError as err:
        raise _os_error(err, "list the items") from None


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
    if idem_key is not None and not KEY_PATTERN.fullmatch(idem_key):
        raise ApiError(400, "invalid_idempotency_key", "Idempotency-Key must be 8 to 64 "
                       "characters from A-Z a-z 0-9 _ - (e.g. a uuid4 in hex)")
    body = _json_body()
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
    limit = current_app.config["STO_MAX_BATCH"]
    if len(create) + len(delete) > limit:
        raise ApiError(400, "batch_too_large", f"a batch may name at most {limit} items, got "
                       f"{len(create) + len(delete)}: split it", max=limit)
    invalid = [name for name in (*create, *delete) if not is_valid_name(name)]
    if invalid:
        raise ApiError(400, "invalid_item_name", f"invalid item names (allowed: {RULE})",
                       invalid=[_shown(n) for n in invalid[:10]])
    try:
        result = _store().batch(create=create, delete=delete, key=idem_key)
    except OSError as err:  # the directory itself failed (e.g. the temporary file)
        raise _os_error(err, "run the batch") from None
    return jsonify(result.as_dict())


def _json_body():
    """The request body as JSON, or None when it is not JSON we can take: invalid JSON, not
    UTF-8, or pathological (nesting deeper than the parser's recursion limit, integers with
    more digits than Python converts)."""
    try:
        return json.loads(request.get_data(cache=False))
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
