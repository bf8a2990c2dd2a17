"""Bounded property-based fuzzing of the real server from its own OpenAPI description.

A real ``auditlog serve`` process (module fixture) serves ``/api/v1/openapi.json``;
schemathesis generates requests for every operation it describes (valid and
invalid ones), sent with a valid key: the writer's for ``POST /api/v1/events``,
the admin's elsewhere.  Whatever is sent, the server must never answer 5xx
(503 back-pressure included: the queue is never full here), every 4xx must be
the documented JSON error shape, and the server must be alive afterwards with
an intact log.  Bounded: ``max_examples`` per operation, derandomized so a run
is reproducible.
"""

from __future__ import annotations

import json

import pytest
import requests
import schemathesis
from helpers_http import ServeProcess, run_cli
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from auditlog.query.http.openapi import EXAMPLE_EVENT, openapi_document

MAX_EXAMPLES = 30


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory):
    data = tmp_path_factory.mktemp("fuzz") / "data"
    assert run_cli(data, "init", "--node-id", "fuzz").returncode == 0
    keys = {}
    for role in ("writer", "admin"):
        p = run_cli(data, "apikey", "create", "--role", role, "--name", f"fuzz-{role}")
        assert p.returncode == 0, p.stderr
        keys[role] = p.stdout.strip().splitlines()[-1]
    srv = ServeProcess(data)
    try:
        srv.wait_ready()
        # a signed checkpoint, so that the proof operations have a tree to answer from
        # whichever worker runs them (not only after POST /api/v1/checkpoints was fuzzed)
        status, _, _ = srv.request("/api/v1/checkpoints", keys["admin"], method="POST")
        assert status == 201, status
        yield srv, keys
        assert srv.terminate() == 0, srv.stderr()  # a clean stop after all of it
        # the error middleware logs every 500 as "unhandled error" (aiohttp itself logs a
        # traceback for each request line it cannot parse: noisy, but not a server error)
        assert "unhandled error" not in srv.stderr()
    finally:
        srv.close()


@pytest.fixture(scope="module")
def api_schema(fuzz_server):
    srv, _ = fuzz_server
    return schemathesis.openapi.from_url(srv.base + "/api/v1/openapi.json", timeout=10)


@pytest.fixture(scope="module")
def http():
    with requests.Session() as s:
        yield s


# The operations, from the same document the server serves (static, so pytest-xdist
# can spread them); the test loads the served copy and checks they agree.
OPERATIONS = sorted((path, method.upper()) for path, ops in openapi_document()["paths"].items() for method in ops)


#: One documented, valid request per operation, always sent first (Phase.explicit).
EXPLICIT = {
    ("/api/v1/events", "POST"): {"body": [EXAMPLE_EVENT], "media_type": "application/json"},
    ("/api/v1/api-keys", "POST"): {
        "body": {"name": "fuzz-explicit", "role": "reader"},
        "media_type": "application/json",
    },
    ("/api/v1/api-keys/{key_id}", "DELETE"): {"path_parameters": {"key_id": "000000000000"}},
    ("/api/v1/holds", "POST"): {
        "body": {"from": "2026-01-01T00:00:00Z", "to": "2026-02-01T00:00:00Z", "reason": "fuzz"},
        "media_type": "application/json",
    },
    ("/api/v1/holds/{hold_id}", "DELETE"): {"path_parameters": {"hold_id": "node-x:1"}},
}


@pytest.mark.parametrize("path,method", OPERATIONS, ids=[f"{m} {p}" for p, m in OPERATIONS])
def test_no_server_errors(api_schema, fuzz_server, http, path, method):
    srv, keys = fuzz_server
    operation = api_schema[path][method]
    token = keys["writer"] if path == "/api/v1/events" else keys["admin"]
    strategy = st.one_of(operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE))
    seen: list[int] = []

    @given(case=strategy)
    @example(case=operation.Case(**EXPLICIT.get((path, method), {})))
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def fuzz(case):
        resp = case.call(session=http, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        seen.append(resp.status_code)
        assert resp.status_code < 500, (case.as_curl_command(), resp.status_code, resp.content[:500])
        if 400 <= resp.status_code < 500:
            # every refusal in the documented shape, long request lines included (the server
            # reads lines up to query.http.base.MAX_LINE_BYTES; past MAX_QUERY_BYTES it says 414)
            ctype = (resp.headers.get("content-type") or [""])[0]
            assert ctype.startswith("application/json"), (case.as_curl_command(), resp.status_code, ctype)
            body = json.loads(resp.content)
            assert body["error"]["status"] == resp.status_code, body
            assert isinstance(body["error"]["message"], str) and body["error"]["message"]
        # never a key in a response (POST /api/v1/api-keys shows only the new key, once)
        for t in keys.values():
            assert t.encode() not in resp.content

    fuzz()
    assert srv.json("/healthz")[0] == 200
    assert seen  # it really sent requests (one, for an operation with nothing to vary)
    if path not in ("/api/v1/api-keys/{key_id}", "/api/v1/holds/{hold_id}"):  # (random ids: 404)
        assert any(200 <= s < 300 for s in seen), seen  # the key worked: not all refused


def test_server_survives_fuzzing(fuzz_server):
    """Alive, still appending, and the log verifies (over the API and with the CLI)."""
    srv, keys = fuzz_server
    assert srv.json("/api/v1/openapi.json") == (200, openapi_document())  # what was fuzzed
    status, body = srv.json(
        "/api/v1/events",
        keys["writer"],
        method="POST",
        body=json.dumps([{"user": "after", "action": "custom.fuzz_done"}]).encode(),
        headers={"Content-Type": "application/json"},
    )
    assert status == 201, body
    status, report = srv.json("/api/v1/verify", keys["admin"])
    assert status == 200 and report["ok"] is True, report
    v = run_cli(srv.data_dir, "verify")
    assert v.returncode == 0, v.stdout + v.stderr
