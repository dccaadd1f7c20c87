"""The typed manifest, the build and train configs and the shared query protocol."""

import json
import random
from pathlib import Path

import pytest

from novelentitymatcher_faiss import (
    ArtifactCorruptError,
    ArtifactIncompatibleError,
    QueryError,
    TrainingError,
    build_index,
    load_index,
    load_shards,
)
from novelentitymatcher_faiss.artifact.manifest import SET_FILE, Manifest, ShardSet, read_manifest
from novelentitymatcher_faiss.index.build import BuildConfig, build
from novelentitymatcher_faiss.index.catalog import read_catalog
from novelentitymatcher_faiss.index.indexing import IndexConfig
from novelentitymatcher_faiss.index.tuning import TuningConfig
from novelentitymatcher_faiss.text.perturb import one_letter_typo
from novelentitymatcher_faiss.train.training import TrainConfig

DATA = Path(__file__).parent / "data"
CURRENCIES = DATA / "currencies.csv"
LANGUAGES = DATA / "languages.csv"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("manifest")
    return {
        "flat": build_index(CURRENCIES, root / "flat", show_progress=False),
        "ivf": build_index(CURRENCIES, root / "ivf", index_type="ivf", nlist=8,
                           show_progress=False),  # fmt: skip
        "languages": build_index(LANGUAGES, root / "languages", show_progress=False),
    }


def raw(index) -> dict:  # noqa: ANN001
    return json.loads((index.path / "manifest.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("name", ["flat", "ivf"])
def test_a_written_manifest_reads_back_to_the_same_json(built: dict, name: str) -> None:
    data = raw(built[name])
    manifest = Manifest.from_dict(data)
    assert manifest.to_dict() == data
    assert manifest == built[name].manifest == read_manifest(built[name].path)
    assert manifest.counts.entities == len(built[name]) and manifest.index.type == name


def test_unknown_top_level_fields_survive_a_round_trip(built: dict) -> None:
    data = {**raw(built["flat"]), "written_by_a_newer_minor": {"x": 1}}
    manifest = Manifest.from_dict(data)
    assert manifest.extra == {"written_by_a_newer_minor": {"x": 1}}
    assert manifest.to_dict() == data


def test_an_older_manifest_without_optional_fields_reads_with_their_defaults(built: dict) -> None:
    data = raw(built["ivf"])
    for key in ("spill", "early_stop", "early_stop_tuning", "ef_search", "vectors_stored"):
        data["index"].pop(key, None)
    for key in ("calibration", "build_stages", "columns", "max_text_chars"):
        data.pop(key, None)
    manifest = Manifest.from_dict(data)
    assert manifest.index.spill == 1 and manifest.index.early_stop is None
    assert manifest.calibration is None and manifest.build_stages is None
    assert manifest.max_text_chars == 2048 and manifest.index.breadth == data["index"]["nprobe"]


@pytest.mark.parametrize(
    ("change", "error", "names"),
    [
        (lambda m: m["index"].pop("rerank"), ArtifactCorruptError, "index.rerank"),
        (lambda m: m["model"].update(dim="256"), ArtifactCorruptError, "model.dim"),
        (lambda m: m["model"].update(bundled=1), ArtifactCorruptError, "model.bundled"),
        (lambda m: m["counts"].update(entities=True), ArtifactCorruptError, "counts.entities"),
        (lambda m: m["index"].update(spill=0), ArtifactCorruptError, "spill"),
        (lambda m: m.update(layers={"segments": "x"}), ArtifactCorruptError, "layers.segments"),
        (lambda m: m.update(max_text_chars=0), ArtifactCorruptError, "max_text_chars"),
        (lambda m: m.update(format="other"), ArtifactIncompatibleError, "format"),
        (lambda m: m["calibration"].update(version=9), ArtifactIncompatibleError, "version 9"),
    ],
)
def test_a_damaged_manifest_names_the_field(built: dict, change, error, names: str) -> None:  # noqa: ANN001
    data = raw(built["flat"])
    change(data)
    with pytest.raises(error, match=names.replace(".", r"\.")):
        Manifest.from_dict(data, "somewhere/manifest.json")


def test_a_shard_set_listing_round_trips_and_refuses_paths(tmp_path: Path) -> None:
    listing = ShardSet(("shard-000000000", "shard-000000100"), 200, "flat", None, "test", 1.5)
    listing.write(tmp_path)
    assert ShardSet.read(tmp_path) == listing
    data = json.loads((tmp_path / SET_FILE).read_text())
    (tmp_path / SET_FILE).write_text(json.dumps({**data, "shards": ["../elsewhere"]}))
    with pytest.raises(ArtifactCorruptError, match="plain folder names"):
        ShardSet.read(tmp_path)
    (tmp_path / SET_FILE).write_text(json.dumps({**data, "format_version": 99}))
    with pytest.raises(ArtifactIncompatibleError, match="newer"):
        ShardSet.read(tmp_path)


def test_build_with_configs_is_build_index(built: dict, tmp_path: Path) -> None:
    config = BuildConfig(index=IndexConfig("ivf", nlist=8), tuning=TuningConfig(seed=0),
                         show_progress=False)  # fmt: skip
    again = build(CURRENCIES, tmp_path / "again", config)
    rng = random.Random(5)
    queries = [one_letter_typo(e["name"], rng) for e in read_catalog(CURRENCIES)][:100]
    assert again.match(queries, top_k=3) == built["ivf"].match(queries, top_k=3)
    mine, theirs = again.manifest.to_dict(), built["ivf"].manifest.to_dict()
    for key in ("created_at", "build_seconds", "build_stages", "files"):
        mine.pop(key), theirs.pop(key)
    assert mine == theirs


def test_configs_refuse_bad_settings_before_any_work() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        BuildConfig(batch_size=0)
    with pytest.raises(ValueError, match="spill"):
        IndexConfig(spill=0)
    with pytest.raises(ValueError, match="index_type"):
        IndexConfig(index_type="")
    with pytest.raises(TrainingError, match="mode"):
        TrainConfig(mode="half")
    with pytest.raises(TrainingError, match="num_epochs"):
        TrainConfig(num_epochs=0)


def test_every_index_kind_answers_through_one_match(built: dict) -> None:
    shards = load_shards([built["flat"].path, built["languages"].path])
    query = ["euro", "Frnch", "zzqx unknown"]
    for index in (built["flat"], shards):
        for nprobe in (0, True, 1.5):
            with pytest.raises(QueryError, match="nprobe"):
                index.match(query, nprobe=nprobe)
        with pytest.raises(QueryError, match="top_k"):
            index.match(query, top_k=0)
    # a shard set's best hit is the better of its shards' best hits
    per_shard = [built[name].match(query) for name in ("flat", "languages")]
    best = [max(hits, key=lambda hit: hit["score"]) for hits in zip(*per_shard, strict=True)]
    assert shards.match(query) == best
    vectors = built["flat"].encode_queries([built["flat"].normalize_query(q) for q in query])
    assert built["flat"].search_vectors(vectors, top_k=2) == built["flat"].match(query, top_k=2)


def test_the_breadth_is_named_for_what_it_is(built: dict) -> None:
    ivf, flat = built["ivf"], built["flat"]
    assert ivf.nprobe == ivf.breadth == ivf.manifest.index.nprobe and ivf.ef_search is None
    assert flat.nprobe is None and flat.breadth is None
    assert load_index(ivf.path).manifest.index.breadth == ivf.breadth
