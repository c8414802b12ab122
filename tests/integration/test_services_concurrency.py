"""Two storage API processes (each granian, 2 workers x 4 threads) sharing one directory, as two
replicas on one volume: many parallel PUT/DELETE never give a 5xx, lose or double an item."""
from __future__ import annotations

import collections
import random
import shutil
import threading

import pytest
import requests

from twotier.dev.servers import APP, STORAGE, ServiceProcess
from twotier.ports import free_port

THREADS = 8
NAMES = [f"item{i}" for i in range(60)]


@pytest.fixture(scope="module")
def replicas(tmp_path_factory):
    directory = tmp_path_factory.mktemp("shared-volume")
    with ServiceProcess(STORAGE, free_port(), {"STO_STORAGE": str(directory)}) as one, \
            ServiceProcess(STORAGE, free_port(), {"STO_STORAGE": str(directory)}) as two:
        yield directory, [one.url, two.url]


def _hammer(urls, jobs):
    """Run ``jobs`` (method, name) from THREADS threads, each with its own keep-alive session,
    spreading requests over both replicas; returns [(method, name, status)]."""
    results, errors = [], []
    lock = threading.Lock()
    queue = list(jobs)

    def worker(seed):
        rng = random.Random(seed)
        session = requests.Session()
        while True:
            with lock:
                if not queue:
                    return
                method, name = queue.pop()
            try:
                resp = session.request(method, f"{rng.choice(urls)}/items/{name}", timeout=30)
                with lock:
                    results.append((method, name, resp.status_code))
            except requests.RequestException as err:
                with lock:
                    errors.append(err)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    return results


def _listings(urls):
    return [requests.get(f"{url}/items", timeout=10).json()["items"] for url in urls]


def test_parallel_creates_each_item_exactly_once(replicas):
    directory, urls = replicas
    results = _hammer(urls, [("PUT", n) for n in NAMES for _ in range(4)])
    statuses = collections.Counter(status for _, _, status in results)
    assert set(statuses) <= {200, 201}, statuses
    created = collections.Counter(name for _, name, status in results if status == 201)
    assert created == collections.Counter(NAMES)  # one 201 per name, the rest 200
    assert _listings(urls) == [sorted(NAMES)] * 2
    assert not [p for p in directory.iterdir() if p.name.startswith(".")]


def test_parallel_deletes_each_item_exactly_once(replicas):
    directory, urls = replicas
    for name in NAMES:
        requests.put(f"{urls[0]}/items/{name}", timeout=10)
    results = _hammer(urls, [("DELETE", n) for n in NAMES for _ in range(4)])
    statuses = collections.Counter(status for _, _, status in results)
    assert set(statuses) <= {200, 404}, statuses
    deleted = collections.Counter(name for _, name, status in results if status == 200)
    assert deleted == collections.Counter(NAMES)
    assert _listings(urls) == [[], []]


def test_mixed_storm_never_fails_and_both_replicas_agree(replicas):
    directory, urls = replicas
    rng = random.Random(7)
    jobs = [(rng.choice(["PUT", "DELETE"]), rng.choice(NAMES[:10])) for _ in range(600)]
    results = _hammer(urls, jobs)
    assert all(status in (200, 201, 404) for _, _, status in results), collections.Counter(
        s for _, _, s in results)
    one, two = _listings(urls)
    assert one == two == sorted(p.name for p in directory.iterdir())  # no temp file, no ghost


def test_two_app_replicas_creating_the_same_list_split_it_without_duplicates(replicas):
    directory, urls = replicas
    for path in directory.iterdir():
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    with ServiceProcess(APP, free_port(), {"STO_API": urls[0], "API_BATCH_SIZE": "50"}) as a, \
            ServiceProcess(APP, free_port(), {"STO_API": urls[1], "API_BATCH_SIZE": "50"}) as b:
        answers = []

        def createlist(url):
            answers.append(requests.get(f"{url}/createlist/2000", timeout=60).json())

        threads = [threading.Thread(target=createlist, args=(u,)) for u in (a.url, b.url, a.url, b.url)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(answers) == 4
        assert all(answer["faileds"] == [] for answer in answers)
        created = [name for answer in answers for name in answer["createds"]]
        assert sorted(created) == sorted(str(i) for i in range(2000))  # each exactly once
        cleared = requests.get(f"{a.url}/clear", timeout=60).json()
        assert len(cleared["deleteds"]) == 2000 and cleared["faileds"] == []
    assert _listings(urls) == [[], []]
