"""``nem-faiss serve``: an opened artifact behind a small JSON-over-HTTP server.

The process opens the artifact once and loads the encoder before it listens, so every
request pays only the match itself (no import, open or model load). Concurrent requests
with the same options are **batched**: a worker thread takes every request waiting (up to
``max_batch`` texts) and answers them with one ``match`` call, which encodes and searches
them together. By default it does not wait for more (``batch_wait_ms=0``): a lone request
is answered at once, and requests that arrive while a match runs form the next batch.

Endpoints (JSON in and out, UTF-8):

- ``GET /healthz``: ``{"status": "ok", "entities", "artifact", "requests", "batches"}``;
- ``POST /match``: ``{"text": str}`` or ``{"texts": [str, ...]}`` plus any of ``top_k``,
  ``threshold``, ``nprobe``, ``where``, ``candidates``, ``metadata`` (as ``match``) ->
  ``{"match": hit-or-list}`` for ``text``, ``{"matches": [...]}`` (one per text) for
  ``texts``. Bad input is a 400 with ``{"error": message}``.

The server is the standard library's threading HTTP server: no extra dependency.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ..errors import NemFaissError, QueryError

#: Request bodies above this many bytes are refused (413).
MAX_BODY_BYTES = 8 * 1024 * 1024
#: Options a /match request may set, with the type each must have.
OPTIONS: dict[str, Any] = {
    "top_k": int, "threshold": (int, float, str), "nprobe": int, "where": dict,
    "candidates": list, "metadata": bool,
}  # fmt: skip


@dataclass
class _Job:
    texts: list[str]
    options: dict[str, Any]
    key: str
    done: threading.Event = field(default_factory=threading.Event)
    result: list[Any] | None = None
    error: Exception | None = None


class Batcher:
    """Answers jobs (texts + match options) from one worker thread, batching the jobs that
    wait with the same options into one ``index.match`` call."""

    def __init__(self, index: Any, max_batch: int = 256, batch_wait_ms: float = 0.0) -> None:
        if max_batch < 1 or batch_wait_ms < 0:
            raise ValueError("max_batch must be >= 1 and batch_wait_ms >= 0")
        self.index, self.max_batch, self.wait = index, max_batch, batch_wait_ms / 1000
        self.requests = self.batches = 0
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._worker = threading.Thread(target=self._run, name="nem-faiss-batcher", daemon=True)
        self._worker.start()

    def match(self, texts: list[str], options: dict[str, Any]) -> list[Any]:
        """One list of hits per text (``top_k`` shape as in ``match``); raises what
        ``match`` raises for these texts and options."""
        job = _Job(texts, options, json.dumps(options, sort_keys=True))
        self._queue.put(job)
        job.done.wait()
        if job.error is not None:
            raise job.error
        return job.result or []

    def close(self) -> None:
        self._queue.put(None)
        self._worker.join()

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            jobs, size, deadline = [first], len(first.texts), time.monotonic() + self.wait
            while size < self.max_batch:
                try:
                    job = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if job is None:
                    self._queue.put(None)  # close after this batch
                    break
                jobs.append(job)
                size += len(job.texts)
            for key in dict.fromkeys(job.key for job in jobs):
                self._answer([job for job in jobs if job.key == key])

    def _answer(self, jobs: list[_Job]) -> None:
        texts = [text for job in jobs for text in job.texts]
        found: list[Any] = []
        try:
            found = self.index.match(texts, **jobs[0].options) if texts else []
        except Exception as exc:  # answered one by one, so one bad job fails alone
            if len(jobs) > 1:
                for job in jobs:
                    self._answer([job])
                return
            jobs[0].error = exc
        self.requests += len(jobs)
        self.batches += 1
        start = 0
        for job in jobs:
            job.result = found[start : start + len(job.texts)]
            start += len(job.texts)
            job.done.set()


def parse_request(body: bytes) -> tuple[list[str], dict[str, Any], bool]:
    """(texts, match options, single) of a /match body; raises QueryError naming the
    problem."""
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise QueryError(f"request body is not UTF-8 JSON ({exc})") from None
    if not isinstance(data, dict):
        raise QueryError("request body must be a JSON object with 'text' or 'texts'")
    if ("text" in data) == ("texts" in data):
        raise QueryError("give exactly one of 'text' (a string) or 'texts' (a list of strings)")
    single = "text" in data
    texts = [data["text"]] if single else data["texts"]
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise QueryError("'text' must be a string and 'texts' a list of strings")
    unknown = sorted(set(data) - {"text", "texts", *OPTIONS})
    if unknown:
        raise QueryError(f"unknown field(s) {unknown}; options are {sorted(OPTIONS)}")
    options = {}
    for key, kind in OPTIONS.items():
        value = data.get(key)
        if value is None:
            continue
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise QueryError(f"{key!r} has the wrong type: {value!r}")
        options[key] = value
    return texts, options, single


def make_server(
    index: Any,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    max_batch: int = 256,
    batch_wait_ms: float = 0.0,
) -> ThreadingHTTPServer:
    """A ready (bound, not yet serving) server answering from opened ``index``; the
    encoder is loaded first. ``port=0`` picks a free port (``server.server_address``).
    Call ``serve_forever()``, then ``shutdown()`` and ``server_close()``."""
    index.match("warm up")  # loads the encoder and pages in the index's hot parts
    server = _Server((host, port), _Handler)
    server.index = index
    server.artifact = str(getattr(index, "path", "")) or repr(index)
    server.batcher = Batcher(index, max_batch, batch_wait_ms)
    return server


class _Server(ThreadingHTTPServer):
    """The HTTP server: the index it answers from, its name and the :class:`Batcher`;
    closing it also stops the batcher."""

    daemon_threads = True
    index: Any = None
    artifact: str = ""
    batcher: Batcher | None = None

    def server_close(self) -> None:
        super().server_close()
        if self.batcher is not None:
            self.batcher.close()


class _Handler(BaseHTTPRequestHandler):
    """``GET /healthz`` and ``POST /match``, JSON in and out."""

    protocol_version = "HTTP/1.1"
    # headers and body go out in two writes: without TCP_NODELAY, Nagle's algorithm and the
    # client's delayed ACK held every keep-alive answer for about 40 ms
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
        pass  # quiet: a service logs through its own proxy

    def _send(self, status: int, payload: dict[str, Any]) -> None:
        body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        if self.path != "/healthz":
            self._send(404, {"error": f"no endpoint GET {self.path}; try /healthz"})
            return
        server, batcher = self.server, self.server.batcher
        self._send(200, {"status": "ok", "entities": len(server.index),
                         "artifact": server.artifact, "requests": batcher.requests,
                         "batches": batcher.batches})  # fmt: skip

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        if self.path != "/match":
            self._send(404, {"error": f"no endpoint POST {self.path}; try /match"})
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY_BYTES:
            self.close_connection = True
            self._send(413, {"error": f"the body must have a Content-Length of at most "
                                      f"{MAX_BODY_BYTES} bytes"})  # fmt: skip
            return
        try:
            texts, options, single = parse_request(self.rfile.read(length))
            found = self.server.batcher.match(texts, options)
        except (NemFaissError, ValueError) as exc:
            self._send(400, {"error": str(exc)})
            return
        self._send(200, {"match": found[0]} if single else {"matches": found})
