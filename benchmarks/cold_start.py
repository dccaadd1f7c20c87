"""Cold start: the first answer from a fresh process, against the raw floor, and served.

Every figure is the median of ``--runs`` fresh Python processes (the page cache warm, as
on a box that queries the artifact often), on the artifact given (default: the 1M
artifact of ``filter_bench.py``):

* ``floor``: ``import faiss, model2vec``, ``StaticModel.from_pretrained`` of the cached
  potion-8m folder, ``faiss.read_index`` with ``IO_FLAG_MMAP_IFC``, one encode and one
  search: what any library built on the two needs at least;
* ``raw floor``: ``import faiss``, ``tokenizers`` and ``safetensors``, the tokenizer and
  the embedding matrix read, the index opened, one mean of token vectors and one search:
  the least any reader of these files does;
* ``library``: ``import novelentitymatcher_faiss``, ``load_index``, the first ``match``,
  each stage timed in the process;
* ``cli``: the wall time of ``nem-faiss query ARTIFACT TEXT``;
* ``served``: ``nem-faiss serve`` started once; the p50 of 200 ``POST /match`` round
  trips of one text each, from this process over loopback.

    python benchmarks/cold_start.py [--artifact DIR] [--runs 5]
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import DATA_DIR, environment, markdown_table, median_seconds, pin_threads, write_results


def probe(imports: str, opening: str, answer: str) -> str:
    """Code for a fresh process that runs ``imports``, ``opening`` and ``answer`` and prints
    the seconds of each and their total (:data:`STAGES`)."""
    return "\n".join([
        "import sys, time", "start = time.perf_counter()", imports.strip(),
        "imported = time.perf_counter()", opening.strip(), "opened = time.perf_counter()",
        answer.strip(), "done = time.perf_counter()",
        "print(imported - start, opened - imported, done - opened, done - start)",
    ])  # fmt: skip


READ_INDEX = "faiss.read_index(sys.argv[2], faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY)"
FLOOR = probe("""
import faiss
import numpy as np
from model2vec import StaticModel
""", f"""
model = StaticModel.from_pretrained(sys.argv[1])
index = {READ_INDEX}
""", """
vector = model.encode(["hofman logistics"])
query = np.zeros((1, index.d), dtype="float32")  # the dense part; lexical left at zero
query[0, : vector.shape[1]] = vector[0]
index.search(query, 1)
""")
RAW = probe("""
import faiss
import numpy as np
from safetensors.numpy import load_file
from tokenizers import Tokenizer
""", f"""
tokenizer = Tokenizer.from_file(sys.argv[1] + "/tokenizer.json")
embeddings = load_file(sys.argv[1] + "/model.safetensors")["embeddings"]
index = {READ_INDEX}
""", """
ids = tokenizer.encode("hofman logistics", add_special_tokens=False).ids
query = np.zeros((1, index.d), dtype="float32")
query[0, : embeddings.shape[1]] = embeddings[ids].mean(axis=0)
index.search(query, 1)
""")
LIBRARY = probe("from novelentitymatcher_faiss import load_index",
                "index = load_index(sys.argv[1])", 'index.match("hofman logistics")')
STAGES = ("import", "open", "first answer", "total")


def fresh(code: str, args: list[str], runs: int) -> dict[str, float]:
    """Median ms of each stage a fresh process prints, over ``runs`` processes."""
    rows = []
    for _ in range(runs):
        out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True,
                             text=True, check=True).stdout.split()  # fmt: skip
        rows.append([float(x) * 1e3 for x in out[-4:]])
    return {name: statistics.median(r[i] for r in rows) for i, name in enumerate(STAGES)}


def cli_wall(artifact: Path, runs: int) -> float:
    """Median wall ms of ``nem-faiss query ARTIFACT TEXT`` in a fresh process."""
    command = [sys.executable, "-m", "novelentitymatcher_faiss.cli", "query", str(artifact),
               "hofman logistics"]  # fmt: skip
    return median_seconds(lambda: subprocess.run(command, capture_output=True, check=True),
                          runs)[0] * 1e3  # fmt: skip


def served(artifact: Path, requests: int = 200, max_batch: int = 256) -> dict[str, float]:
    """Start ``nem-faiss serve``; its start-up ms, the p50 / p99 ms of one-text requests and
    :func:`concurrent`'s figures."""
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "novelentitymatcher_faiss.cli", "serve",
                                str(artifact), "--port", "0", "--max-batch", str(max_batch)],
                               stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        line = process.stdout.readline()
        ready = (time.perf_counter() - start) * 1e3
        port = int(line.split("http://", 1)[1].split(" ", 1)[0].rsplit(":", 1)[1])
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        body = json.dumps({"text": "hofman logistics"})
        times = []
        for _ in range(requests):
            t0 = time.perf_counter_ns()
            connection.request("POST", "/match", body=body)
            connection.getresponse().read()
            times.append((time.perf_counter_ns() - t0) / 1e6)
        times.sort()
        return {"ready_ms": ready, "p50_ms": statistics.median(times),
                "p99_ms": times[int(0.99 * (len(times) - 1))],
                **concurrent(port, body)}  # fmt: skip
    finally:
        process.terminate()
        process.wait(timeout=30)


def concurrent(port: int, body: str, clients: int = 8, each: int = 100) -> dict[str, float]:
    """q/s of ``clients`` threads sending ``each`` one-text requests on their own
    connections, and how many match calls the server made for them (from /healthz)."""
    import threading

    def health() -> dict:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.request("GET", "/healthz")
        return json.loads(connection.getresponse().read())

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        for _ in range(each):
            connection.request("POST", "/match", body=body)
            connection.getresponse().read()

    before = health()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - start
    after = health()
    return {"concurrent_clients": clients, "concurrent_qps": clients * each / seconds,
            "requests_per_batch": (after["requests"] - before["requests"])
            / max(1, after["batches"] - before["batches"])}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifact", type=Path,
                        default=DATA_DIR / "artifacts" / "filter-names-1m-auto")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    threads = pin_threads(2)
    from novelentitymatcher_faiss.models.sources import fetch_model

    info = environment(threads)
    model = fetch_model("potion-8m", show_progress=False)
    floor = fresh(FLOOR, [str(model), str(args.artifact / "index.faiss")], args.runs)
    raw = fresh(RAW, [str(model), str(args.artifact / "index.faiss")], args.runs)
    library = fresh(LIBRARY, [str(args.artifact)], args.runs)
    cli = cli_wall(args.artifact, args.runs)
    server = served(args.artifact)
    unbatched = served(args.artifact, max_batch=1)
    rows = [["raw floor: faiss + tokenizers + safetensors",
             *(f"{raw[s]:.0f}" for s in STAGES), "1.00x"],
            ["floor with model2vec: faiss + StaticModel", *(f"{floor[s]:.0f}" for s in STAGES),
             f"{floor['total'] / raw['total']:.2f}x"],
            ["library: load_index + match", *(f"{library[s]:.0f}" for s in STAGES),
             f"{library['total'] / raw['total']:.2f}x"],
            ["CLI: nem-faiss query (wall)", "", "", "", f"{cli:.0f}", ""],
            ["served: POST /match, p50", "", "", "", f"{server['p50_ms']:.2f}", ""]]  # fmt: skip
    concurrency = (f" With {server['concurrent_clients']} concurrent clients: "
                   f"{server['concurrent_qps']:,.0f} requests/s, "
                   f"{server['requests_per_batch']:.1f} requests per match call "
                   f"({unbatched['concurrent_qps']:,.0f} requests/s with --max-batch 1).")
    markdown = (
        f"# Cold start ({args.artifact.name})\n\n`python benchmarks/cold_start.py`; "
        f"medians of {args.runs} fresh processes, ms; the server was ready "
        f"{server['ready_ms']:.0f} ms after start, p99 {server['p99_ms']:.2f} ms."
        f"{concurrency}\n\n"
        + markdown_table(["path", *STAGES, "total / raw floor"], rows)
    )
    write_results("cold-start", {**info, "artifact": str(args.artifact.name), "raw_floor": raw,
                                 "floor": floor,
                                 "library": library, "cli_ms": cli, "served": server,
                                 "served_max_batch_1": unbatched},
                  markdown)  # fmt: skip
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
