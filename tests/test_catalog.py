import json
from pathlib import Path

import pytest

from novelentitymatcher_faiss import CatalogError, NemFaissError
from novelentitymatcher_faiss.index.catalog import read_catalog

DATA = Path(__file__).parent / "data"


def test_reads_real_csv_with_pipe_aliases():
    entities = list(read_catalog(DATA / "universities.csv"))
    assert len(entities) == 50
    mit = next(e for e in entities if e["id"] == "massachusetts_institute_of_technology")
    assert mit["aliases"] == ["MIT"]
    assert mit["country"] == "US"  # extra columns are kept as metadata


def test_jsonl_and_json_sources(tmp_path):
    rows = [{"id": "a", "name": "Alpha", "aliases": ["A"]}, {"id": "b", "name": "Beta"}]
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp_path / "c.json").write_text(json.dumps(rows))
    for name in ("c.jsonl", "c.json"):
        got = list(read_catalog(tmp_path / name))
        assert [e["id"] for e in got] == ["a", "b"]
        assert got[1]["aliases"] == []


@pytest.mark.parametrize(
    ("rows", "fragment"),
    [
        ([], "empty"),
        ([{"id": "a", "name": "A"}, {"id": "a", "name": "B"}], "entity 2: duplicate id 'a'"),
        ([{"id": "", "name": "A"}], "entity 1: 'id' is empty"),
        ([{"id": "a", "name": "  "}], "entity 1: 'name' is empty"),
        ([{"name": "A"}], "entity 1: missing 'id'"),
        ([{"id": 7, "name": "A"}], "'id' must be a string"),
        ([{"id": "a", "name": float("nan")}], "missing 'name'"),
        ([{"id": "a", "name": "A", "aliases": [1]}], "alias must be a string"),
        ([{"id": "a", "name": "A", "score": float("nan")}], "JSON-serialisable"),
        (["not a dict"], "expected a mapping"),
    ],
)
def test_bad_rows_raise_catalog_error_naming_the_row(rows, fragment):
    with pytest.raises(CatalogError, match=fragment) as info:
        list(read_catalog(rows))
    assert isinstance(info.value, NemFaissError)


def test_csv_errors_name_file_and_line(tmp_path):
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("key,label\nx,y\n")
    with pytest.raises(CatalogError, match=r"missing column\(s\) \['id', 'name'\]"):
        list(read_catalog(wrong))
    dup = tmp_path / "dup.csv"
    dup.write_text("id,name\na,Alpha\nb,Beta\na,Again\n")
    with pytest.raises(CatalogError, match="line 4: duplicate id"):
        list(read_catalog(dup))


def test_csv_not_utf8_and_bom(tmp_path):
    latin = tmp_path / "latin.csv"
    latin.write_bytes("id,name\na,Caf\xe9\n".encode("latin-1"))
    with pytest.raises(CatalogError, match="not valid UTF-8"):
        list(read_catalog(latin))
    bom = tmp_path / "bom.csv"
    bom.write_bytes(b"\xef\xbb\xbfid,name\na,Alpha\n")
    assert [e["id"] for e in read_catalog(bom)] == ["a"]


def test_unsupported_and_missing_files(tmp_path):
    with pytest.raises(CatalogError, match="not found"):
        list(read_catalog(tmp_path / "nope.csv"))
    (tmp_path / "c.xml").write_text("<x/>")
    with pytest.raises(CatalogError, match="unsupported catalog format"):
        list(read_catalog(tmp_path / "c.xml"))


def test_reading_is_streamed():
    def endless():
        n = 0
        while True:
            n += 1
            yield {"id": str(n), "name": f"entity {n}"}

    stream = read_catalog(endless())
    first = [next(stream) for _ in range(3)]
    assert [e["id"] for e in first] == ["1", "2", "3"]
