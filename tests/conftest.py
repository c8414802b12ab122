"""Shared pytest fixtures (flaskr style): each service's Flask app built by its factory with a
fresh temporary storage directory, and a test client for each.

  storage_dir     an empty directory for the storage API's items (under tmp_path)
  storage_app     storage_api.create_app on storage_dir          storage_client: its test client
  api_app         app_api.create_app wired to storage_app in-process (through a requests
                  transport adapter, so the app's real StorageClient code runs)
                                                                  api_client: its test client
  hello_app_      hello_app.create_app()                          hello_client: its test client
  seed_storage_transcript / seed_app_transcript
                  the seed's curl transcripts (first-steps.md, "Pre-containerization sanity
                  checks"), verbatim, parsed into (method, port, path, expected body text)
  live_storage / live_app / empty_live_storage
                  the services as real processes (gunicorn) on free loopback ports

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

# The seed's transcripts, verbatim (../shared/seed/first-steps.md, Step 3).
SEED_STORAGE_TRANSCRIPT = """\
    curl localhost:5000/items               #  {"items":[]}
    curl -XPUT localhost:5000/items/xyz     #  {"created":{"xyz":true}}
    curl -XPUT localhost:5000/items/abc     #  {"created":{"abc":true}}
    curl localhost:5000/items               #  {"items":["abc","xyz"]}
    curl -XDELETE localhost:5000/items/abc  #  {"deleted":{"abc":true}}
    curl -XDELETE localhost:5000/items/xyz  #  {"deleted":{"xyz":true}}
    curl localhost:5000/items               #  {"items":[]}
"""
SEED_APP_TRANSCRIPT = """\
    curl localhost:5001/createlist/4        #  {"createds":["0","1","2","3"],"deleteds":[],"faileds":[]}
    curl localhost:5001/createlist/2        #  {"createds":[],"deleteds":[],"faileds":[]}
    curl localhost:5001/createlist/6        #  {"createds":["4","5"],"deleteds":[],"faileds":[]}
    curl localhost:5001/clear               #  {"createds":[],"deleteds":["0","1","2","3","4","5"],"faileds":[]}
    curl localhost:5001/createlist/3        #  {"createds":["0","1","2"],"deleteds":[],"faileds":[]}
    curl localhost:5001/clear               #  {"createds":[],"deleteds":["0","1","2"],"faileds":[]}
"""
_SEED_LINE = re.compile(r"^\s*curl (?:-X(?P<method>[A-Z]+) )?localhost:(?P<port>\d+)(?P<path>/\S*)"
                        r"\s+#\s+(?P<expected>\S.*)$")


def parse_transcript(text: str) -> list[tuple[str, int, str, str]]:
    """[(method, port, path, expected body text)] from seed-style ``curl ... # body`` lines."""
    steps = []
    for line in text.splitlines():
        match = _SEED_LINE.match(line)
        assert match, f"not a transcript line: {line!r}"
        steps.append((match["method"] or "GET", int(match["port"]), match["path"], match["expected"]))
    return steps


@pytest.fixture
def seed_storage_transcript():
    return parse_transcript(SEED_STORAGE_TRANSCRIPT)


@pytest.fixture
def seed_app_transcript():
    return parse_transcript(SEED_APP_TRANSCRIPT)


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
        resp.encoding = "utf-8"
        resp.url = request.url
        resp.request = request
        return resp

    def close(self):
        pass


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
# The services as real processes (gunicorn, as in production) on free loopback ports
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def live_storage(tmp_path_factory):
    """The storage API as a real process; ``.url``, ``.storage_dir`` (a fresh directory)."""
    from twotier.servers import STORAGE, ServiceProcess, free_port

    directory = tmp_path_factory.mktemp("live-storage")
    with ServiceProcess(STORAGE, free_port(), {"STO_STORAGE": str(directory)}) as proc:
        proc.storage_dir = directory
        yield proc


@pytest.fixture(scope="module")
def live_app(live_storage):
    """The application API as a real process, talking to ``live_storage``."""
    from twotier.servers import APP, ServiceProcess, free_port

    with ServiceProcess(APP, free_port(), {"STO_API": live_storage.url}) as proc:
        yield proc


@pytest.fixture
def empty_live_storage(live_storage):
    """``live_storage`` with no items at the start of the test."""
    for path in live_storage.storage_dir.iterdir():
        path.unlink()
    return live_storage
