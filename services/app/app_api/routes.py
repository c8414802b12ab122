"""The application API's endpoints (the seed's two), answering with the seed's bodies.

  GET /createlist/<number>  create items "0" .. "<number>-1" that do not exist yet
  GET /clear                delete every item

Both answer ``{"createds": [...], "deleteds": [...], "faileds": [...]}``. ``createds`` lists
exactly the items this call created (in numeric order; a batch re-sent after a dropped
connection counts what its first attempt created: idempotency keys), ``deleteds`` those it
deleted (in the storage's sorted order; the same keys make it exact), ``faileds`` those it
could not create/delete. Items another client created or deleted concurrently are in none of
the lists. If the storage tier fails on the first batch the answer is a JSON 502/503/504
error; if it fails halfway, the answer is still 200 and the items certainly not done are in
``faileds``: the batches never sent, and the batch in flight if it never reached the storage;
a batch the storage may have partly done is in no list (a repeated call settles it). Each
request has a total deadline (``API_DEADLINE``) for all its calls to the storage tier.

HEAD on these two answers 405 (a HEAD must not create or delete anything).
"""
from __future__ import annotations

import re

from flask import Blueprint, current_app, jsonify

from twotier_service.jsonapi import ApiError, no_head, request_id

from .storage_client import Deadline, StorageClient, StorageError

bp = Blueprint("lists", __name__)
no_head(bp, "createlist", "clear")
_NUMBER = re.compile(r"[0-9]+", re.ASCII)


@bp.get("/createlist/<number>")
def createlist(number: str):
    count = _parse_number(number, current_app.config["API_MAX_ITEMS"])
    names = [str(i) for i in range(count)]
    createds, faileds = _run(names, "create", _deadline())
    return jsonify(createds=createds, deleteds=[], faileds=faileds)


@bp.get("/clear")
def clear():
    deadline = _deadline()
    deleteds, faileds = _run(_storage().list_items(deadline), "delete", deadline)
    return jsonify(createds=[], deleteds=deleteds, faileds=faileds)


def _run(names: list[str], op: str, deadline: Deadline) -> tuple[list[str], list[str]]:
    """OP ("create" or "delete") on NAMES in batches: (the names done, the names failed)."""
    done, faileds = [], []
    for result in _batches(names, op, deadline):
        if isinstance(result, _Stopped):
            faileds.extend(result.not_done())
            break
        done.extend(result[f"{op}d"])  # "created" / "deleted"
        faileds.extend(result["failed"])
    return done, faileds


class _Stopped:
    """The storage failed on the chunk ``names[start:end]`` after earlier chunks succeeded."""

    def __init__(self, names: list[str], start: int, end: int, err: StorageError):
        self.names, self.start, self.end, self.err = names, start, end, err

    def not_done(self) -> list[str]:
        """The names whose operation certainly did not happen: the chunk in flight if it never
        reached the storage, and every later one."""
        return self.names[self.end if self.err.sent else self.start:]


def _batches(names: list[str], op: str, deadline: Deadline):
    """Yield the storage's result per chunk of API_BATCH_SIZE names. A failure of the first
    chunk is raised (a clean 5xx); a later failure yields one ``_Stopped`` and ends."""
    size = current_app.config["API_BATCH_SIZE"]
    storage = _storage()
    for start in range(0, len(names), size):
        chunk = names[start:start + size]
        try:
            result = storage.batch(**{op: chunk}, deadline=deadline)
        except StorageError as err:
            if start == 0:
                raise
            current_app.logger.warning("request %s: %s stopped after %d of %d items: %s",
                                       request_id(), op, start, len(names), err.detail or err.message)
            yield _Stopped(names, start, start + len(chunk), err)
            return
        yield result


def _deadline() -> Deadline:
    return Deadline(current_app.config["API_DEADLINE"])


def _parse_number(raw: str, limit: int) -> int:
    if not _NUMBER.fullmatch(raw):
        raise ApiError(400, "invalid_number", f"<number> must be a non-negative integer "
                       f"(0 to {limit}), got {raw[:40]!r}", max=limit)
    digits = raw.lstrip("0") or "0"  # leading zeros: the number they are
    value = int(digits) if len(digits) <= 18 else limit + 1
    if value > limit:
        raise ApiError(400, "invalid_number", f"<number> may be at most {limit} (API_MAX_ITEMS), "
                       f"got {raw[:40]}", max=limit)
    return value


def _storage() -> StorageClient:
    return current_app.extensions["storage"]
