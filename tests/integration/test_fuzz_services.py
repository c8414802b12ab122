"""Fuzz each service's OpenAPI description against the real running server (granian).

Schemathesis generates valid and invalid requests from services/*/openapi.yaml and runs its
default checks on every answer: no 5xx, status codes and bodies as documented, JSON content
type, invalid data rejected with a 4xx. Examples are bounded so the suite stays fast.
"""
from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import schemathesis
import yaml
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import negative_data_rejection

ROOT = Path(__file__).resolve().parents[2]
FUZZ_MAX_ITEMS = 300  # the app under fuzz caps <number> here, so every case stays fast
FUZZ = settings(max_examples=40, deadline=None, derandomize=True,
                suppress_health_check=list(HealthCheck))


def _spec(service: str) -> dict:
    return yaml.safe_load((ROOT / "services" / service / "openapi.yaml").read_text())


def _app_spec() -> dict:
    spec = copy.deepcopy(_spec("app"))
    param = spec["paths"]["/createlist/{number}"]["get"]["parameters"][0]
    param["schema"]["maximum"] = FUZZ_MAX_ITEMS  # the server below runs with API_MAX_ITEMS=300
    return spec


storage_schema = schemathesis.openapi.from_dict(_spec("storage"))
app_schema = schemathesis.openapi.from_dict(_app_spec())
hello_schema = schemathesis.openapi.from_dict(_spec("hello"))


@pytest.fixture(scope="module")
def fuzz_app(live_storage):
    from twotier.dev.servers import APP, ServiceProcess
    from twotier.ports import free_port

    env = {"STO_API": live_storage.url, "API_MAX_ITEMS": str(FUZZ_MAX_ITEMS)}
    with ServiceProcess(APP, free_port(), env) as proc:
        yield proc


@pytest.fixture(scope="module")
def live_hello():
    from twotier.dev.servers import HELLO, ServiceProcess
    from twotier.ports import free_port

    with ServiceProcess(HELLO, free_port()) as proc:
        yield proc


@storage_schema.parametrize()
@FUZZ
def test_fuzz_storage_api(case, live_storage):
    case.call_and_validate(base_url=live_storage.url)


@app_schema.parametrize()
@FUZZ
def test_fuzz_application_api(case, fuzz_app):
    # A path segment is text: a "schema-violating" <number> (a string "7" where the schema says
    # integer) that renders as a valid decimal in range is a valid request on the wire, so it is
    # not held to the invalid-data-rejected check. Every other check still applies to it.
    number = str((case.path_parameters or {}).get("number", ""))
    valid_on_the_wire = re.fullmatch(r"[0-9]+", number) and int(number) <= FUZZ_MAX_ITEMS
    case.call_and_validate(base_url=fuzz_app.url,
                           excluded_checks=[negative_data_rejection] if valid_on_the_wire else [])


@hello_schema.parametrize()
@FUZZ
def test_fuzz_hello_app(case, live_hello):
    case.call_and_validate(base_url=live_hello.url)
