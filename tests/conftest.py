"""Shared pytest fixtures (flaskr style): each service's Flask app built by its factory with a
fresh temporary storage directory, and a test client for each.

  storage_dir     an empty directory for the storage API's items (under tmp_path)
  storage_app     storage_api.create_app on storage_dir          storage_client: its test client
  api_app         app_api.create_app wired to storage_app in-process (through a requests
                  transport adapter, so the app's real StorageClient code runs)
                                                                  api_client: its test client
  hello_app_      hello_app.create_app()                          hello_client: its test client
  seed_storage_transcript / seed_app_transcript
                  the seed's curl transcripts read from docs/first-steps.md ("Pre-containerization
                  sanity checks"), as (method, port, path, expected body text)
  live_storage / live_app / empty_live_storage
                  the services as real processes (granian) on free loopback ports

Add fixtures for other parts of the project below; keep them generic.
"""
from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
from requests.structures import CaseInsensitiveDict

ROOT = Path(__file__).resolve().parents[1]
IN_PROCESS_STORAGE = "http://storage.test"

# The seed's transcripts, read verbatim from the tutorial itself (docs/first-steps.md, Step 3,
# "Pre-containerization sanity checks"): lines like `curl -XPUT localhost:5000/items/xyz  #  {...}`.
SEED_TUTORIAL = ROOT / "docs" / "first-steps.md"
_SEED_LINE = re.compile(r"^\s*curl (?:-X(?P<method>[A-Z]+) )?localhost:(?P<port>500[01])"
                        r"(?P<path>/(?:items|createlist|clear)\S*)\s+#\s+(?P<expected>\S.*)$")


def seed_transcript(port: int) -> list[tuple[str, int, str, str]]:
    """[(method, port, path, expected body text)] of the tutorial's transcript for ``port``."""
    assert SEED_TUTORIAL.is_file(), f"the seed tutorial is missing: {SEED_TUTORIAL}"
    steps = []
    for line in SEED_TUTORIAL.read_text().splitlines():
        match = _SEED_LINE.match(line)
        if match and int(match["port"]) == port:
            steps.append((match["method"] or "GET", port, match["path"], match["expected"]))
    return steps


@pytest.fixture
def seed_storage_transcript():
    steps = seed_transcript(5000)
    assert len(steps) == 7, f"expected the 7 storage steps in {SEED_TUTORIAL}, found {steps}"
    return steps


@pytest.fixture
def seed_app_transcript():
    steps = seed_transcript(5001)
    assert len(steps) == 6, f"expected the 6 application steps in {SEED_TUTORIAL}, found {steps}"
    return steps


class WSGIAdapter(requests.adapters.BaseAdapter):
    """A requests transport that hands each request to a WSGI app in this process."""

    def __init__(self, app):
        super().__init__()
        self.client = app.test_client()

    def send(self, request, stream=False, timeout=None, verify=True, cert=None, proxies=None):
        url = urlsplit(request.url)
        answer = self.client.open(url.path, method=request.method, query_string=url.query,
                                  data=request.body, headers=dict(request.headers))
        resp = requests.Response()
        resp.status_code = answer.status_code
        resp.headers = CaseInsensitiveDict(answer.headers)
        resp._content = answer.get_data()
        resp._content_consumed = True  # read as a stream (stream=True) from _content
        resp.encoding = "utf-8"
        resp.url = request.url
        resp.request = request
        return resp

    def close(self):
        pass


@pytest.fixture
def wsgi_adapter():
    """The WSGIAdapter class (tests import fixtures, not conftest modules: e2e has its own)."""
    return WSGIAdapter


@pytest.fixture
def storage_dir(tmp_path) -> Path:
    path = tmp_path / "storage"
    path.mkdir()
    return path


@pytest.fixture
def storage_app(storage_dir):
    from storage_api import create_app

    return create_app({"STO_STORAGE": str(storage_dir), "TESTING": True})


@pytest.fixture
def storage_client(storage_app):
    return storage_app.test_client()


@pytest.fixture
def api_app(storage_app):
    from app_api import create_app

    app = create_app({"STO_API": IN_PROCESS_STORAGE, "TESTING": True})
    app.extensions["storage"].session.mount(IN_PROCESS_STORAGE, WSGIAdapter(storage_app))
    return app


@pytest.fixture
def api_client(api_app):
    return api_app.test_client()


@pytest.fixture
def hello_app_():
    from hello_app import create_app

    return create_app({"TESTING": True})


@pytest.fixture
def hello_client(hello_app_):
    return hello_app_.test_client()


# ------------------------------------------------------------------------------------------
# The services as real processes (granian, as in production) on free loopback ports
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def live_storage(tmp_path_factory):
    """The storage API as a real process; ``.url``, ``.storage_dir`` (a fresh directory)."""
    from twotier.dev.servers import STORAGE, ServiceProcess
    from twotier.ports import free_port

    directory = tmp_path_factory.mktemp("live-storage")
    with ServiceProcess(STORAGE, free_port(), {"STO_STORAGE": str(directory)}) as proc:
        proc.storage_dir = directory
        yield proc


@pytest.fixture(scope="module")
def live_app(live_storage):
    """The application API as a real process, talking to ``live_storage``."""
    from twotier.dev.servers import APP, ServiceProcess
    from twotier.ports import free_port

    with ServiceProcess(APP, free_port(), {"STO_API": live_storage.url}) as proc:
        yield proc


@pytest.fixture
def empty_live_storage(live_storage):
    """``live_storage`` with no items at the start of the test."""
    for path in live_storage.storage_dir.iterdir():
        path.unlink()
    return live_storage


# ------------------------------------------------------------------------------------------
# The e2e tier in another module order: `--e2e-order=reverse` or `--e2e-order=random[:SEED]`
# (or TWOTIER_E2E_ORDER=...), to show that no module depends on what another left behind.
# Tests inside a module keep their order (a scenario module follows the tutorial step by step).
# ------------------------------------------------------------------------------------------
E2E_DIR = ROOT / "tests" / "e2e"


def pytest_addoption(parser):
    parser.addoption("--e2e-order", default=None, metavar="file|reverse|random[:SEED]",
                     help="order of the tests/e2e modules (default: file order, or TWOTIER_E2E_ORDER); "
                          "tests inside a module keep their order")


def e2e_module_order(modules: list[str], order: str) -> list[str]:
    """MODULES (paths, in file order) in ORDER: file, reverse, random (a new seed) or random:SEED."""
    import random

    kind, _, seed = order.partition(":")
    if kind == "file":
        return list(modules)
    if kind == "reverse":
        return list(reversed(modules))
    if kind == "random":
        shuffled = list(modules)
        random.Random(seed).shuffle(shuffled)
        return shuffled
    raise pytest.UsageError(f"--e2e-order={order}: use file, reverse, random or random:SEED")


def pytest_configure(config):
    import os
    import secrets

    order = config.getoption("--e2e-order") or os.environ.get("TWOTIER_E2E_ORDER") or "file"
    if order == "random":  # a seed of its own, shown in the header so the order can be replayed
        order = f"random:{secrets.randbelow(10**6)}"
    config._e2e_order = order


def pytest_report_header(config):
    return f"e2e module order: {config._e2e_order}"


def pytest_collection_modifyitems(session, config, items):
    """Reorder the e2e modules (within the places they hold in the run); everything else stays."""
    def is_e2e(item) -> bool:
        return E2E_DIR in Path(str(item.path)).parents

    if config._e2e_order == "file" or not any(is_e2e(i) for i in items):
        return
    modules: dict[str, list] = {}
    for item in items:
        if is_e2e(item):
            modules.setdefault(str(item.path), []).append(item)
    ordered = [item for module in e2e_module_order(list(modules), config._e2e_order) for item in modules[module]]
    it = iter(ordered)
    items[:] = [next(it) if is_e2e(item) else item for item in items]
