"""``nem-faiss serve`` over real sockets: a real artifact (upstream's university catalog,
potion-8m) behind the HTTP server, queried with ``http.client`` from several threads."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from novelentitymatcher_faiss import build_index, load_index
from novelentitymatcher_faiss.query.serve import Batcher, make_server

UNIVERSITIES = Path(__file__).parent / "data" / "universities.csv"
QUERIES = ["harvrd univ", "MIT", "oxfrd", "stanford", "univ of cambrige", "ETH zurich",
           "sorbonne", "yale"]  # fmt: skip


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("serve") / "unis"
    build_index(UNIVERSITIES, path, show_progress=False)
    return path


@pytest.fixture(scope="module")
def server(artifact):
    index = load_index(artifact)
    # a long batch window, so concurrent requests surely meet in one batch
    srv = make_server(index, port=0, batch_wait_ms=50)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv, index
    srv.shutdown()
    srv.server_close()


def call(srv, method: str, path: str, body: object = None) -> tuple[int, dict]:
    host, port = srv.server_address[:2]
    connection = http.client.HTTPConnection(host, port, timeout=30)
    data = None if body is None else (body if isinstance(body, bytes) else
                                      json.dumps(body).encode("utf-8"))  # fmt: skip
    connection.request(method, path, body=data, headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    payload = json.loads(response.read().decode("utf-8"))
    connection.close()
    return response.status, payload


def test_match_over_http_equals_the_library(server):
    srv, index = server
    status, payload = call(srv, "POST", "/match", {"text": "harvrd univ"})
    assert status == 200 and payload["match"] == index.match("harvrd univ")
    status, payload = call(srv, "POST", "/match", {"texts": QUERIES, "top_k": 3,
                                                   "where": {"country": "US"},
                                                   "metadata": True})  # fmt: skip
    assert status == 200
    assert payload["matches"] == index.match(QUERIES, top_k=3, where={"country": "US"},
                                             metadata=True)  # fmt: skip
    status, payload = call(srv, "POST", "/match", {"text": "nothing like it", "threshold": 0.99})
    assert status == 200 and payload["match"] is None
    status, payload = call(srv, "POST", "/match", {"texts": ["harvrd univ", "cooking pasta"],
                                                   "threshold": "auto"})  # fmt: skip
    assert status == 200 and payload["matches"] == index.match(["harvrd univ", "cooking pasta"],
                                                               threshold="auto")  # fmt: skip
    assert payload["matches"][0]["confidence"] >= 0.4 and payload["matches"][1] is None


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(server):
    srv, index = server
    before = call(srv, "GET", "/healthz")[1]
    answers: dict[str, object] = {}

    def ask(text: str) -> None:
        answers[text] = call(srv, "POST", "/match", {"text": text})[1]["match"]

    threads = [threading.Thread(target=ask, args=(text,)) for text in QUERIES]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert answers == {text: index.match(text) for text in QUERIES}
    after = call(srv, "GET", "/healthz")[1]
    assert after["requests"] - before["requests"] == len(QUERIES)
    assert after["batches"] - before["batches"] < len(QUERIES)  # some shared a match call


def test_bad_requests_are_clear_400s_and_the_server_goes_on(server):
    srv, _ = server
    for body, message in [
        (b"{not json", "not UTF-8 JSON"),
        ({"texts": "oxford"}, "list of strings"),
        ({"text": "a", "texts": ["b"]}, "exactly one"),
        ({"text": "a", "top_k": 0}, "top_k"),
        ({"text": "a", "top_k": True}, "wrong type"),
        ({"text": "a", "colour": "red"}, "unknown field"),
        ({"text": "a", "where": {"nope": 1}}, "no column 'nope'"),
        ({"text": "a", "threshold": "high"}, "threshold must be"),
    ]:
        status, payload = call(srv, "POST", "/match", body)
        assert status == 400 and message in payload["error"], (body, payload)
    assert call(srv, "GET", "/nowhere")[0] == 404
    status, health = call(srv, "GET", "/healthz")
    assert status == 200 and health["status"] == "ok" and health["entities"] > 0


def test_one_bad_job_in_a_batch_fails_alone(artifact):
    batcher = Batcher(load_index(artifact), batch_wait_ms=50)
    results: dict[str, object] = {}

    def run(name: str, options: dict) -> None:
        try:
            results[name] = batcher.match(["oxfrd"], options)
        except Exception as exc:  # noqa: BLE001 - the error is the result here
            results[name] = type(exc).__name__

    bad = {"candidates": ["no-such-id"]}
    threads = [threading.Thread(target=run, args=(f"good{i}", {})) for i in range(3)]
    threads.append(threading.Thread(target=run, args=("bad", bad)))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    batcher.close()
    assert results["bad"] == "QueryError"
    assert all(results[f"good{i}"][0]["id"] == "university_of_oxford" for i in range(3))


def test_cli_serve_answers_from_a_fresh_process(artifact):
    process = subprocess.Popen(
        [sys.executable, "-m", "novelentitymatcher_faiss.cli", "serve", str(artifact),
         "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        line = process.stdout.readline()
        assert "serving" in line, line + process.stderr.read()
        port = int(line.split("http://", 1)[1].split(" ", 1)[0].rsplit(":", 1)[1])
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.request("POST", "/match", body=json.dumps({"text": "oxfrd"}))
        payload = json.loads(connection.getresponse().read())
        assert payload["match"]["id"] == "university_of_oxford"
    finally:
        process.terminate()
        process.wait(timeout=30)
