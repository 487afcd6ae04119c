"""Schemathesis against a real `forgeline serve` on loopback, driven by the server's own OpenAPI document:
every endpoint, generated bodies, headers and query strings, valid (positive) and schema-breaking
(negative) ones, with and without the bearer token. No answer may be a 5xx, every answer must be one the
document declares (status, content type, body schema), and the server keeps answering a valid request
throughout. Bounded in examples (the ``forgeline`` Hypothesis profile, tests/conftest.py, per mode) so
the suite keeps its time; docs/faults.md lists what CI runs."""

from __future__ import annotations

import json
from collections import Counter

import httpx
import pytest
from hypothesis import HealthCheck, given, settings

from tests.serving.conftest import module_server

pytestmark = [pytest.mark.fuzz]

TOKEN = "fuzz-token-0123456789abcdef"
EXAMPLES = 3 * settings().max_examples
"""Per mode: a request takes about 10 ms here, so the API affords three times the profile's count."""
VALID = json.dumps({"texts": ["the ride is wonderful and excellent"]}).encode()


@pytest.fixture(scope="module")
def token_server(tmp_path_factory, trained, exported):
    yield from module_server(tmp_path_factory, trained, exported, "fuzz-server", "max_texts_per_request=8",
                             "max_text_chars=200", "max_body_bytes=4000", env={"FORGELINE_SERVE_TOKEN": TOKEN})


def test_the_api_description_follows_the_token(token_server):
    for path in ("/openapi.json", "/docs", "/redoc"):
        assert httpx.get(f"{token_server.url}{path}").status_code == 401, path
        assert httpx.get(f"{token_server.url}{path}", headers={"authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_generated_requests_get_no_5xx_and_only_declared_answers(token_server):
    import schemathesis
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        negative_data_rejection,
        response_schema_conformance,
        status_code_conformance,
    )

    auth = {"Authorization": f"Bearer {TOKEN}"}
    # schema-breaking input may be refused as too large (413) or too slow (408) as well as malformed
    config = schemathesis.Config.from_dict({"checks": {"negative_data_rejection": {
        "expected-statuses": [400, 401, 408, 413, 415, 422]}}})
    schema = schemathesis.openapi.from_url(f"{token_server.url}/openapi.json", headers=auth, config=config)
    conformance = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    statuses: Counter[int] = Counter()
    session = httpx.Client(timeout=30)

    def still_answering() -> None:
        ok = session.post(f"{token_server.url}/v1/predict", content=VALID,
                          headers={"content-type": "application/json", **auth})
        assert ok.status_code == 200, ok.text

    def run(mode, headers: dict[str, str] | None, checks) -> None:
        @settings(max_examples=EXAMPLES, suppress_health_check=list(HealthCheck))
        @given(case=schema.as_strategy(mode, headers=headers))
        def one(case) -> None:
            response = case.call_and_validate(base_url=token_server.url, checks=checks, timeout=30)
            statuses[response.status_code] += 1
            if sum(statuses.values()) % 25 == 0:
                still_answering()

        one()

    run(GenerationMode.POSITIVE, auth, conformance)
    run(GenerationMode.NEGATIVE, auth, conformance + [negative_data_rejection])
    run(GenerationMode.POSITIVE, None, conformance)  # no token: /v1/* must be 401, probes and /metrics open
    still_answering()

    print(f"fuzz: {sum(statuses.values())} requests, statuses {dict(sorted(statuses.items()))}")
    assert sum(statuses.values()) >= 2 * EXAMPLES
    assert not [s for s in statuses if s >= 500]
    assert statuses[401] > 0 and statuses[200] > 0 and any(400 <= s < 500 and s != 401 for s in statuses)
    metrics = httpx.get(f"{token_server.url}/metrics").text
    assert 'status="5' not in metrics
