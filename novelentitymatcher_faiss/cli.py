"""``nem-faiss``: build, query, inspect and verify index artifacts; manage models."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .errors import NemFaissError
from .models.registry import DEFAULT_MODEL

if TYPE_CHECKING:
    from .text.lexical import LexicalSettings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nem-faiss", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    _build_arguments(commands)
    _train_arguments(commands)
    _update_arguments(commands)
    _query_arguments(commands)
    _info_arguments(commands)
    return parser


def _build_arguments(commands: Any) -> None:
    """The ``build`` command."""
    build = commands.add_parser("build", help="encode a catalog into an index artifact")
    build.add_argument(
        "catalog", help="catalog file: .csv (aliases '|'-separated), .jsonl or .json"
    )
    build.add_argument("--out", required=True, help="artifact directory to write")
    build.add_argument("--model", default=DEFAULT_MODEL, help="registry alias, hub id or folder")
    build.add_argument("--dim", type=int, default=None, help="truncate vectors to this dimension")
    build.add_argument(
        "--index",
        default="auto",
        help="auto, flat, ivf, ivf-fp16, ivf-sq8, ivf-pq, ivf-pq-small, hnsw or a factory string",
    )
    build.add_argument("--nprobe", type=int, default=None, help="fix nprobe instead of tuning it")
    build.add_argument(
        "--spill", type=int, default=None,
        help="file each vector under this many nearest IVF lists (default: 2 for ivf-pq, else 1)",
    )  # fmt: skip
    build.add_argument("--batch-size", type=int, default=1024)
    build.add_argument(
        "--bundle-model", action="store_true", help="copy the model into the artifact"
    )
    build.add_argument("--no-normalize", action="store_true", help="do not normalize texts")
    build.add_argument(
        "--no-lexical", action="store_true", help="dense vectors only, no character n-grams"
    )
    build.add_argument(
        "--no-name-map", action="store_true",
        help="lexical channel without the learned cross-language name map",
    )  # fmt: skip
    build.add_argument("--overwrite", action="store_true", help="replace an existing artifact")
    build.add_argument("--quiet", action="store_true", help="no progress bars")
    build.add_argument(
        "--json", action="store_true",
        help="print the artifact, index settings, counts and per-stage build seconds as JSON",
    )  # fmt: skip


def _train_arguments(commands: Any) -> None:
    """The ``train`` command."""
    train = commands.add_parser(
        "train", help="fine-tune on labelled examples (SetFit) and write a trained artifact"
    )
    train.add_argument("catalog", help="catalog file: .csv, .jsonl or .json")
    train.add_argument("training", help="labelled examples: .csv (text,label) or .jsonl")
    train.add_argument("--out", required=True, help="artifact directory to write")
    train.add_argument(
        "--base-model", default="mpnet", help="trainable model (static ones fall back to mpnet)"
    )
    train.add_argument(
        "--mode", choices=("zero-shot", "head-only", "full"), default=None,
        help="default: head-only if every label has < 3 examples, else full",
    )  # fmt: skip
    train.add_argument("--epochs", type=int, default=1)
    train.add_argument("--batch-size", type=int, default=16)
    train.add_argument("--max-steps", type=int, default=None, help="cap the training steps")
    train.add_argument("--learning-rate", type=float, default=2e-5)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument(
        "--distill", action="store_true", help="distill into a static model2vec model"
    )
    train.add_argument("--distill-dims", type=int, default=256, help="PCA dims of --distill")
    train.add_argument(
        "--no-lexical", action="store_true", help="dense vectors only, no character n-grams"
    )
    train.add_argument(
        "--no-name-map", action="store_true",
        help="lexical channel without the learned cross-language name map",
    )  # fmt: skip
    train.add_argument("--overwrite", action="store_true", help="replace an existing artifact")
    train.add_argument("--quiet", action="store_true", help="no progress bars")


def _update_arguments(commands: Any) -> None:
    """The ``update`` command."""
    update = commands.add_parser(
        "update", help="write a new artifact from an old one: add, replace or remove entities"
    )
    update.add_argument("artifact", help="the artifact to update (left unchanged)")
    update.add_argument("--out", required=True, help="artifact directory to write")
    update.add_argument("--add", help="catalog file of entities to add (an existing id replaces)")
    update.add_argument("--remove", nargs="*", default=[], metavar="ID", help="ids to remove")
    update.add_argument("--remove-file", help="file with one id to remove per line")
    update.add_argument("--batch-size", type=int, default=1024)
    update.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    update.add_argument(
        "--compact",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="write one index (--compact) or a layer over the hard-linked parent "
        "(--no-compact); by default a layer while the changes stay under 25%%",
    )
    update.add_argument("--quiet", action="store_true", help="no progress bars")


def _query_arguments(commands: Any) -> None:
    """The commands that answer queries: ``query``, ``serve``, ``diagnose``."""
    query = commands.add_parser("query", help="match texts (arguments, or one per stdin line)")
    query.add_argument("artifact")
    query.add_argument("texts", nargs="*")
    query.add_argument("--top-k", type=int, default=1)
    query.add_argument("--threshold", type=_threshold, default=None, help=THRESHOLD_HELP)
    query.add_argument("--nprobe", type=int, default=None)
    query.add_argument("--json", action="store_true", help="one JSON line per query")
    query.add_argument("--shard", action="append", default=[], metavar="DIR",
                       help="another artifact searched together with the first (repeatable)")
    query.add_argument("--scorer", default=None, metavar="{hybrid,index,head}",
                       help="for trained artifacts (default: the artifact's, hybrid)")
    _filter_arguments(query)
    query.add_argument("--metadata", action="store_true", help="print each hit's metadata")

    serve = commands.add_parser(
        "serve", help="answer /match requests over HTTP (JSON), batching concurrent ones"
    )
    serve.add_argument("artifact")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--shard", action="append", default=[], metavar="DIR",
                       help="another artifact searched together with the first (repeatable)")
    serve.add_argument("--max-batch", type=int, default=256,
                       help="texts answered by one match call at most")
    serve.add_argument("--batch-wait-ms", type=float, default=0.0,
                       help="how long a request waits for others to batch with (default: "
                       "none; requests that arrive while a match runs are batched anyway)")

    diagnose = commands.add_parser(
        "diagnose", help="a query's best candidates, their score parts and the decision"
    )
    diagnose.add_argument("artifact")
    diagnose.add_argument("text")
    diagnose.add_argument("--top-k", type=int, default=5)
    diagnose.add_argument("--threshold", type=_threshold, default=None, help=THRESHOLD_HELP)
    diagnose.add_argument("--entity", default=None, metavar="ID",
                          help="explain the score against this entity instead")
    _filter_arguments(diagnose)


def _info_arguments(commands: Any) -> None:
    """The commands about artifacts and models: ``info``, ``verify``, ``models``."""
    info = commands.add_parser("info", help="print an artifact's manifest summary")
    info.add_argument("artifact")
    info.add_argument("--json", action="store_true", help="print the whole manifest")

    verify = commands.add_parser("verify", help="check every file's size and sha256")
    verify.add_argument("artifact")

    models = commands.add_parser("models", help="list, fetch or locate models")
    model_commands = models.add_subparsers(dest="models_command", required=True)
    model_commands.add_parser("list", help="the registry, with cache status")
    fetch = model_commands.add_parser("fetch", help="download a model into the cache")
    fetch.add_argument("name")
    where = model_commands.add_parser("path", help="print a cached model's folder")
    where.add_argument("name")


def _filter_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--where", action="append", default=[], metavar="COLUMN=VALUE",
        help="only entities whose metadata COLUMN is VALUE (repeat a column for any of "
        "several values; COLUMN>=VALUE, >, <=, < and != compare), or a JSON object of "
        "conditions",
    )  # fmt: skip
    parser.add_argument("--candidates", default=None, metavar="ID,ID,...",
                        help="only these entity ids (comma-separated, or @FILE: one per line)")


#: ``--where`` comparison signs and the operators they stand for (longest first).
_SIGNS = ((">=", "gte"), ("<=", "lte"), ("!=", "ne"), (">", "gt"), ("<", "lt"), ("=", "eq"))


def parse_filters(
    where: Sequence[str], candidates: str | None
) -> tuple[dict[str, Any] | None, list[str] | None]:
    """``--where`` and ``--candidates`` as ``match``'s ``where`` and ``candidates``;
    raises ValueError naming a malformed one. Values stay strings: the columns convert
    them to their type."""
    conditions: dict[str, Any] = {}
    for item in where:
        if item.lstrip().startswith("{"):
            try:
                parsed = json.loads(item)
            except json.JSONDecodeError as exc:
                raise ValueError(f"--where {item!r}: invalid JSON ({exc.msg})") from None
            if not isinstance(parsed, dict):
                raise ValueError(f"--where {item!r}: a JSON filter must be an object")
            conditions.update(parsed)
            continue
        sign, op = next(((s, o) for s, o in _SIGNS if s in item), (None, None))
        column, _, value = item.partition(sign) if sign else ("", "", "")
        if not column.strip():
            raise ValueError(f"--where {item!r}: expected COLUMN=VALUE (or >=, >, <=, <, !=)")
        column = column.strip()
        current = conditions.setdefault(column, {})
        if not isinstance(current, dict):
            raise ValueError(f"--where: column {column!r} given both as JSON and COLUMN=VALUE")
        if op == "eq":
            current.setdefault("in", []).append(value)
        else:
            current[op] = value
    ids = None
    if candidates is not None:
        if candidates.startswith("@"):
            with open(candidates[1:], encoding="utf-8") as handle:
                ids = [line.strip() for line in handle if line.strip()]
        else:
            ids = [part.strip() for part in candidates.split(",") if part.strip()]
    return conditions or None, ids


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``nem-faiss``; returns the exit status (2 for library errors)."""
    args = _parser().parse_args(argv)
    try:
        handler = {
            "build": _build,
            "train": _train,
            "update": _update,
            "query": _query,
            "diagnose": _diagnose,
            "serve": _serve,
            "info": _info,
            "verify": _verify,
            "models": _models,
        }[args.command]
        return handler(args)
    except (NemFaissError, ValueError) as exc:  # ValueError: an argument the library refused
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0


def _lexical(args: argparse.Namespace) -> bool | LexicalSettings:
    """``--no-lexical``: False; ``--no-name-map``: the default settings without the map."""
    from .text.lexical import LexicalSettings

    if args.no_lexical:
        return False
    return LexicalSettings(name_map=0.0) if args.no_name_map else True


def _build(args: argparse.Namespace) -> int:
    from .index.build import build_index

    index = build_index(
        args.catalog,
        args.out,
        model=args.model,
        embedding_dim=args.dim,
        index_type=args.index,
        nprobe=args.nprobe,
        spill=args.spill,
        batch_size=args.batch_size,
        normalize=not args.no_normalize,
        lexical=_lexical(args),
        bundle_model=args.bundle_model,
        overwrite=args.overwrite,
        show_progress=not args.quiet,
    )
    if args.json:
        manifest = index.manifest
        report = {"artifact": str(index.path), "index": manifest.index.to_dict(),
                  "counts": manifest.counts.to_dict(), "build_seconds": manifest.build_seconds,
                  "build_stages": manifest.build_stages}  # fmt: skip
        print(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        print(index)
    return 0


def _update(args: argparse.Namespace) -> int:
    from .index.update import update_index

    remove = list(args.remove)
    if args.remove_file:
        with open(args.remove_file, encoding="utf-8") as handle:
            remove += [line.strip() for line in handle if line.strip()]
    index = update_index(
        args.artifact,
        args.out,
        add=args.add,
        remove=remove,
        overwrite=args.overwrite,
        batch_size=args.batch_size,
        show_progress=not args.quiet,
        compact=args.compact,
    )
    lineage = index.manifest.lineage or {}
    print(index)
    print(
        f"added {lineage['added_entities']}, replaced {lineage['replaced_entities']}, removed "
        f"{lineage['removed_entities']}; reused {lineage['reused_vectors']} vectors, encoded "
        f"{lineage['encoded_vectors']}"
    )
    return 0


def _train(args: argparse.Namespace) -> int:
    from .train.training import train_index

    index = train_index(
        args.catalog,
        args.training,
        args.out,
        model=args.base_model,
        mode=args.mode,
        num_epochs=args.epochs,
        batch_size=args.batch_size,
        max_steps=args.max_steps,
        learning_rate=args.learning_rate,
        seed=args.seed,
        distill={"pca_dims": args.distill_dims} if args.distill else False,
        lexical=_lexical(args),
        overwrite=args.overwrite,
        show_progress=not args.quiet,
    )
    training = index.manifest.training or {"mode": "zero-shot"}
    print(index)
    print(
        f"mode {training['mode']}, base {training.get('base_model', {}).get('name', '-')}, "
        f"{training.get('examples', 0)} examples, {training.get('steps', 0)} steps, "
        f"{training.get('train_seconds', 0)} s"
    )
    return 0


def _print_hits(text: str, hits: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        print(json.dumps({"query": text, "matches": hits}, ensure_ascii=False), flush=True)
        return
    if not hits:
        print(f"{text}\t-\t(no match)")
    for hit in hits:
        extra = ""
        if "metadata" in hit:
            extra = "\t" + json.dumps(hit["metadata"], ensure_ascii=False, sort_keys=True)
        print(f"{text}\t{hit['id']}\t{hit['score']:.4f}\t{hit['text']}{extra}")


def _open_index(args: argparse.Namespace) -> Any:
    """``args.artifact`` opened, with every ``--shard`` as one shard set when given."""
    from .query.match_index import load_index
    from .query.shards import load_shards

    return load_shards([args.artifact, *args.shard]) if args.shard else load_index(args.artifact)


def _query(args: argparse.Namespace) -> int:
    from .query.scorers import scorer_for

    index = _open_index(args)
    where, candidates = parse_filters(args.where, args.candidates)
    kwargs = {"top_k": args.top_k, "threshold": args.threshold, "nprobe": args.nprobe,
              "where": where, "candidates": candidates, "metadata": args.metadata}  # fmt: skip
    index = scorer_for(index, args.scorer)  # a shard set: the index only
    if args.texts:
        batches = [args.texts]
        as_json = args.json
    else:  # one query per stdin line, one JSON line out per query
        batches = _stdin_batches()
        as_json = True
    for texts in batches:
        results = index.match(list(texts), **kwargs)
        for text, hits in zip(texts, results, strict=True):
            _print_hits(text, hits if isinstance(hits, list) else [hits] if hits else [], as_json)
    return 0


def _serve(args: argparse.Namespace) -> int:
    from .query.serve import make_server

    index = _open_index(args)
    server = make_server(index, args.host, args.port, max_batch=args.max_batch,
                         batch_wait_ms=args.batch_wait_ms)  # fmt: skip
    host, port = server.server_address[:2]
    print(f"serving {args.artifact} ({len(index)} entities) on http://{host}:{port} "
          "(POST /match, GET /healthz); Ctrl-C stops", flush=True)  # fmt: skip
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


THRESHOLD_HELP = ("a number, or 'auto': on a calibrated artifact a cut on each hit's "
                  "confidence (auto: 0.4), else on the score; default: no cut, raw hits")


def _threshold(value: str) -> float | str:
    """A ``--threshold`` value: "auto" or a number."""
    if value == "auto":
        return value
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'auto', got {value!r}") from None


def _print_calibration(model: Any) -> None:
    """The ``info`` lines of an artifact's :class:`~.calibration.Calibration` (or that there
    is none)."""
    if model is None:
        print("confidence: none (threshold applies to the raw score)")
        return
    fitted, held = model.fitted_on, model.held_out
    print(f"confidence: logistic over {len(model.weights)} features, fitted on "
          f"{fitted['examples']} examples: {fitted['queries']} perturbed catalog texts "
          f"searched with and without their entity (seed {fitted['seed']}; kinds "
          f"{fitted['kinds']})")  # fmt: skip
    print(f"            held-out {held['examples']}: AUROC {held['auroc']}, ECE {held['ece']}; "
          f"at threshold {held['threshold']}: answered {held['answered']}, precision "
          f"{held['precision']}, recall {held['recall']}")  # fmt: skip


def _diagnose(args: argparse.Namespace) -> int:
    from .query.diagnostics import diagnose, explain_match
    from .query.match_index import load_index

    index = load_index(args.artifact)
    where, candidates = parse_filters(args.where, args.candidates)
    if args.entity is not None:
        report = explain_match(index, args.text, args.entity)
    else:
        report = diagnose(index, args.text, threshold=args.threshold, top_k=args.top_k,
                          where=where, candidates=candidates)  # fmt: skip
    print(json.dumps(report, indent=2, ensure_ascii=False))
    return 0


def _stdin_batches(size: int = 1024) -> Any:
    batch: list[str] = []
    for line in sys.stdin:
        batch.append(line.rstrip("\n"))
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _info(args: argparse.Namespace) -> int:
    from .artifact.manifest import read_manifest

    manifest = read_manifest(args.artifact)
    if args.json:
        print(json.dumps(manifest.to_dict(), indent=2, sort_keys=True))
        return 0
    model, index, counts = manifest.model, manifest.index, manifest.counts
    print(f"artifact:   {args.artifact}")
    print(
        f"format:     {manifest.format} v{manifest.format_version}, "
        f"library {manifest.library_version}, faiss {manifest.faiss_version}"
    )
    print(
        f"model:      {model.name} ({model.backend}), "
        f"dim {model.dim}/{model.native_dim}, bundled: {model.bundled}"
    )
    print(
        f"index:      {index.type} ({index.factory}), "
        f"nlist {index.nlist}, nprobe {index.nprobe}, spill {index.spill}"
    )
    _print_early_stop(index.early_stop)
    _print_lexical(manifest.lexical)
    print(f"counts:     {counts.entities} entities, {counts.vectors} vectors")
    fields = (manifest.columns or {}).get("fields", {})
    if fields:
        listed = ", ".join(f"{name} ({info['type']}, {info['rows']} rows)"
                           for name, info in sorted(fields.items()))  # fmt: skip
        print(f"columns:    {listed}")
    print(f"size:       {manifest.size() / 1e6:.1f} MB in {len(manifest.files)} files")
    print(f"built:      {manifest.created_at} in {manifest.build_seconds} s")
    stages = manifest.build_stages
    if stages:
        from .index.build import BUILD_STAGES

        ordered = sorted(stages, key=lambda n: BUILD_STAGES.index(n) if n in BUILD_STAGES else 99)
        print("stages:     " + ", ".join(f"{name} {stages[name]:.2f} s" for name in ordered))
    _print_calibration(manifest.calibration)
    return 0


def _print_early_stop(stop: Any) -> None:
    """The ``info`` line of an :class:`~.search.EarlyStop` plan (nothing for None)."""
    if stop is None:
        return
    later = "".join(f"; then {n} lists, margin {m:.3f}" for n, m in stop.then)
    print(f"early stop: top-1 queries probe {stop.nprobe} lists first, stop on a margin "
          f"of {stop.margin:.3f} over the next list{later}")  # fmt: skip
    if stop.graph_ef_search:
        print(f"            stages find their lists in an HNSW graph over the centroids "
              f"(efSearch {stop.graph_ef_search})")  # fmt: skip


def _print_lexical(lexical: Any) -> None:
    """The ``info`` line of :class:`~.lexical.LexicalSettings` (or dense only)."""
    if lexical is None:
        print("lexical:    none (dense only)")
        return
    spelled = " + spelling forms" if lexical.phonetic else ""
    name_map = (f", name map {lexical.map_name} (share {lexical.name_map})"
                if lexical.name_map else ", no name map")  # fmt: skip
    grams = f"{lexical.ngram_min}-{lexical.ngram_max}-grams"
    print(f"lexical:    weight {lexical.weight}, {lexical.dim} buckets of {grams}"
          f"{spelled}{name_map}")  # fmt: skip


def _verify(args: argparse.Namespace) -> int:
    from .query.match_index import load_index

    index = load_index(args.artifact, verify="full")
    print(f"ok: {args.artifact} ({len(index.manifest.files)} files, sha256 verified)")
    return 0


def _models(args: argparse.Namespace) -> int:
    from .models import registry, sources

    if args.models_command == "list":
        print(f"{'alias':<11} {'backend':<22} {'dim':>5} {'mrl':<4} {'train':<5} {'cached':<6} id")
        for spec in registry.list_models():
            cached = "yes" if sources.is_cached(spec.alias) else "no"
            print(
                f"{spec.alias:<11} {spec.backend:<22} {spec.native_dim:>5} "
                f"{'yes' if spec.mrl else 'no':<4} {'yes' if spec.trainable else 'no':<5} "
                f"{cached:<6} {spec.model_id}"
            )
        return 0
    if args.models_command == "fetch":
        print(sources.fetch_model(args.name, show_progress=True))
        return 0
    path = sources.model_path(args.name)
    if path is None:
        print(
            f"error: {args.name!r} is not cached; run `nem-faiss models fetch {args.name}`",
            file=sys.stderr,
        )
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
