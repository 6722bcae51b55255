"""Fuzzing: Schemathesis against a live `recbook serve` (its OpenAPI schema), Hypothesis against the dataset readers."""
import subprocess
import sys

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import (content_type_conformance, negative_data_rejection,
                                               response_schema_conformance, status_code_conformance)
from schemathesis.checks import not_a_server_error

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
