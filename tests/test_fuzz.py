"""Fuzzing: Schemathesis against a live `recbook serve` (its OpenAPI schema), Hypothesis against the dataset readers."""
import subprocess
import sys
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.specs.openapi.checks import (content_type_conformance, negative_data_rejection,
                                               response_schema_conformance, status_code_conformance)
from schemathesis.checks import not_a_server_error

from recbook.data import DatasetError, load_dataset
from recbook.serving import BackgroundServer, call

EXAMPLES = 40  # per operation: a few minutes in all on two cores


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory, monkeypatch_module):
    "A two-tower model (it has /search) behind `recbook serve`, and the OpenAPI schema it publishes."
    work = tmp_path_factory.mktemp("fuzz")
    trained = subprocess.run([sys.executable, "-m", "recbook", "train", "--model", "twotower", "--dataset", "beauty-tiny",
                              "--out", str(work / "model"), "--smoke", "--epochs", "1"], capture_output=True, text=True)
    assert trained.returncode == 0, trained.stderr[-3000:]
    with BackgroundServer(work / "model", feedback=work / "feedback.sqlite", exit_after=900, log=work / "server.log") as server:
        schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
        schema.server = server
        yield schema


@pytest.fixture(scope="module")
def monkeypatch_module():
    "MiniLM comes from its pip package: the server child process must not reach the Hugging Face Hub."
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        yield patch


def test_the_api_never_fails_and_keeps_to_its_schema(api_schema):
    """Every operation of the schema, EXAMPLES generated requests each: no 5xx; every status is one the schema
    declares for the route, with the declared content type and body; data the schema forbids is refused with a 4xx.
    (Schema-valid requests may still be refused: an integer the schema allows is not always an item of the catalogue,
    so Schemathesis's positive-data check does not apply.) Hypothesis is driven directly: the pytest plugin's lazy
    schema does not run under pytest 9."""
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
              negative_data_rejection]
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert {f"{o.method.upper()} {o.path}" for o in operations} >= {"POST /recommend", "POST /search", "GET /items/{item}",
                                                                    "POST /feedback", "GET /healthz"}
    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
        def check(case):
            case.call_and_validate(checks=checks)

        check()
    assert call(api_schema.server.url, "/healthz")[0] == 200, "still serving after the fuzzing"


# --- the dataset readers --------------------------------------------------------------------------------------------

TRICKY = ["", " ", "NaN", "inf", "-1", "0", "007", "1e5", "1.5", "²", "٣", "9" * 30, "2021-13-45", "2020-02-29",
          "B00X,Y", '"', "é", "\x00", "null", "True"]
cells = st.one_of(st.sampled_from(TRICKY), st.integers(-10**20, 10**20).map(str),
                  st.floats(allow_nan=True, allow_infinity=True).map(repr), st.text(max_size=8))
COLUMNS = ["user_id", "item_id", "position", "timestamp", "title", "brand", "categories", "price", "rating"]


def csv_text(columns, rows) -> str:
    import csv
    import io

    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(columns)
    writer.writerows(row[:len(columns)] for row in rows)
    return out.getvalue()


def read_or_refuse(folder: Path, names) -> None:
    """`load_dataset` either reads the folder or raises a DatasetError naming one of `names` (the files in it), and the
    row and field too when the problem is a value; any other exception fails the test. The folder is left as it was."""
    before = sorted((p.name, p.read_bytes()) for p in folder.iterdir())
    try:
        load_dataset(folder, k=1)
    except DatasetError as error:
        assert any(name in error.path for name in names), f"the error names no file: {error}"
        if error.row is not None or error.line is not None:
            assert error.field is not None, f"a row without its field: {error}"
    assert sorted((p.name, p.read_bytes()) for p in folder.iterdir()) == before, "the reader wrote into the folder"


@given(columns=st.lists(st.sampled_from(COLUMNS), max_size=5, unique=True),
       rows=st.lists(st.lists(cells, min_size=5, max_size=5), max_size=6),
       items=st.one_of(st.none(), st.tuples(st.lists(st.sampled_from(COLUMNS), max_size=4, unique=True),
                                            st.lists(st.lists(cells, min_size=4, max_size=4), max_size=4))),
       compressed=st.booleans())
@settings(max_examples=200, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
def test_csv_datasets_are_read_or_refused_with_a_dataset_error(tmp_path_factory, columns, rows, items, compressed):
    import gzip

    folder = tmp_path_factory.mktemp("csv")
    name = "interactions.csv" + (".gz" if compressed else "")
    data = csv_text(columns, rows).encode()
    (folder / name).write_bytes(gzip.compress(data, mtime=0) if compressed else data)
    if items is not None: (folder / "items.csv").write_text(csv_text(*items))
    read_or_refuse(folder, [name, "items.csv"])


@given(lines=st.lists(st.lists(st.one_of(st.sampled_from(TRICKY), st.integers(0, 50).map(str)), max_size=5),
                      max_size=8))
@settings(max_examples=200, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
def test_sequence_files_are_read_or_refused_with_a_dataset_error(tmp_path_factory, lines):
    folder = tmp_path_factory.mktemp("seq")
    (folder / "shop.txt").write_text("\n".join(" ".join(tokens) for tokens in lines) + "\n")
    read_or_refuse(folder, ["shop.txt"])


@given(data=st.binary(max_size=200), name=st.sampled_from(["interactions.csv", "interactions.csv.gz", "shop.txt",
                                                           "shop.txt.gz", "shop.inter"]))
@settings(max_examples=200, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
def test_arbitrary_bytes_are_refused_with_a_dataset_error(tmp_path_factory, data, name):
    folder = tmp_path_factory.mktemp("bytes")
    (folder / name).write_bytes(data)
    read_or_refuse(folder, [name])
