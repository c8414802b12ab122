"""The application API's endpoints (the seed's two), answering with the seed's bodies.

  GET /createlist/<number>  create items "0" .. "<number>-1" that do not exist yet
  GET /clear                delete every item

Both answer ``{"createds": [...], "deleteds": [...], "faileds": [...]}``. ``createds`` lists the
items this call created (in numeric order), ``deleteds`` those it deleted (in the storage's
sorted order), ``faileds`` those it could not create/delete. Items another client created or
deleted concurrently are in none of the lists. If the storage tier fails before anything was
done the answer is a JSON 502/503/504 error; if it fails halfway, the items not done are in
``faileds`` and the answer is still 200.
"""
from __future__ import annotations

import re

from flask import Blueprint, current_app, jsonify

from twotier_service.jsonapi import ApiError

from .storage_client import StorageClient, StorageError

bp = Blueprint("lists", __name__)
_NUMBER = re.compile(r"[0-9]+", re.ASCII)


@bp.get("/createlist/<number>")
def createlist(number: str):
    count = _parse_number(number, current_app.config["API_MAX_ITEMS"])
    names = [str(i) for i in range(count)]
    createds, faileds = [], []
    for done, result in _batches(names, "create"):
        if result is None:  # the storage failed after some batches had succeeded
            faileds.extend(names[done:])
            break
        createds.extend(result["created"])
        faileds.extend(result["failed"])
    return jsonify(createds=createds, deleteds=[], faileds=faileds)


@bp.get("/clear")
def clear():
    names = _storage().list_items()
    deleteds, faileds = [], []
    for done, result in _batches(names, "delete"):
        if result is None:
            faileds.extend(names[done:])
            break
        deleteds.extend(result["deleted"])
        faileds.extend(result["failed"])
    return jsonify(createds=[], deleteds=deleteds, faileds=faileds)


def _batches(names: list[str], op: str):
    """Yield (index of its first name, storage result) per chunk of API_BATCH_SIZE names.
    A failure of the first chunk is raised (nothing done: a clean 5xx); a later failure yields
    ``result=None`` once, so the caller reports the rest as failed."""
    size = current_app.config["API_BATCH_SIZE"]
    storage = _storage()
    for start in range(0, len(names), size):
        chunk = names[start:start + size]
        try:
            result = storage.batch(**{op: chunk})
        except StorageError as err:
            if start == 0:
                raise
            current_app.logger.warning("%s stopped after %d of %d items: %s",
                                       op, start, len(names), err.message)
            yield start, None
            return
        yield start, result


def _parse_number(raw: str, limit: int) -> int:
    if not _NUMBER.fullmatch(raw):
        raise ApiError(400, "invalid_number", f"<number> must be a non-negative integer "
                       f"(0 to {limit}), got {raw[:40]!r}", max=limit)
    value = int(raw) if len(raw) <= 18 else limit + 1
    if value > limit:
        raise ApiError(400, "invalid_number", f"<number> may be at most {limit} (API_MAX_ITEMS), "
                       f"got {raw[:40]}", max=limit)
    return value


def _storage() -> StorageClient:
    return current_app.extensions["storage"]
