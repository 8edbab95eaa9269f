"""The HTTP server: every endpoint in process (FastAPI's test client), every class of bad input as a 4xx
JSON error naming its field, the limits and the timeout, metrics, readiness, atomic reload, retrieval, one
run of :func:`serve` over a real socket (with a reload on SIGHUP), and a bounded fuzz of the OpenAPI schema
that finds no 5xx."""

from __future__ import annotations

import copy
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import warnings

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

with warnings.catch_warnings():  # starlette's test client announces a future move to httpx2
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from polyrec.serving.predictor import Predictor, RetrievalPredictor
from polyrec.serving.server import create_app

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

LIMITS = {"max_candidates": 8, "max_body_bytes": 4000, "timeout_s": 10.0}
CANDIDATES = [{"item_id": i, "tags": "t1|t2", "dense_0": 0.1 * i} for i in range(1, 6)]
RANK = {"domain": "app", "user": {"user_id": 3}, "context": {}, "candidates": CANDIDATES}


@pytest.fixture(scope="module")
def predictor(ranking_run) -> Predictor:
    return Predictor.from_run(ranking_run)


@pytest.fixture(scope="module")
def client(predictor) -> TestClient:
    return TestClient(create_app(predictor, **LIMITS), raise_server_exceptions=False)


def metric(text: str, name: str, **labels) -> float | None:
    """The value of sample ``name{labels}`` in a Prometheus text exposition (every line checked to parse)."""
    found = None
    for line in text.splitlines():
        if not line or line.startswith("# HELP ") or line.startswith("# TYPE "):
            continue
        m = re.fullmatch(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)", line)
        assert m, f"not a sample line: {line!r}"
        got = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m[2] or ""))
        if m[1] == name and got == {k: str(v) for k, v in labels.items()}:
            found = float(m[3])
    return found


class Gated(Predictor):
    """A predictor whose rank waits for ``gate`` (and says when it has started)."""

    def rank(self, *args, **kwargs):
        self.entered.set()
        self.gate.wait(20)
        self.calls += 1
        return super().rank(*args, **kwargs)


def gated(predictor: Predictor) -> Gated:
    p = copy.copy(predictor)
    p.__class__ = Gated
    p.entered, p.gate, p.calls = threading.Event(), threading.Event(), 0
    return p


# ----------------------------------------------------------------------------------------------- endpoints


def test_rank_answers_the_predictors_scores_in_candidate_order(client, predictor) -> None:
    r = client.post("/v1/rank", json=RANK)
    assert r.status_code == 200, r.text
    body = r.json()
    want = predictor.rank("app", {"user_id": 3}, {}, CANDIDATES)
    assert body["scores"] == want.logits.tolist() and body["probabilities"] == want.probabilities.tolist()
    assert body["oov"] == want.oov and body["domains"] == ["app"] * 5 and body["fallback"] == 0
    # candidates may carry their raw domain instead of the request's; an empty list is an empty answer
    carried = client.post("/v1/rank", json={**RANK, "domain": None, "candidates": [{**CANDIDATES[0], "domain": 0}]})
    assert carried.status_code == 200 and carried.json()["domains"] == ["web"]
    empty = client.post("/v1/rank", json={**RANK, "candidates": []})
    assert empty.json() == {
        "scores": [],
        "probabilities": [],
        "oov": dict.fromkeys(want.oov, 0),
        "domains": [],
        "fallback": 0,
    }


def test_health_readiness_and_the_openapi_schema(client, ranking_run) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["ready"] and ready["kind"] == "ranking" and ready["run_dir"] == str(ranking_run)
    assert ready["input_columns"] == ["user_id", "item_id", "tags", "dense_0"] and ready["domains"] == ["web", "app"]
    schema = client.get("/openapi.json").json()
    assert {"/v1/rank", "/v1/retrieve", "/healthz", "/readyz", "/metrics", "/admin/reload"} <= set(schema["paths"])
    rank = schema["components"]["schemas"]["RankRequest"]
    assert rank["properties"]["candidates"]["maxItems"] == LIMITS["max_candidates"]
    assert rank["additionalProperties"] is False and rank["required"] == ["candidates"]
    assert "422" in schema["paths"]["/v1/rank"]["post"]["responses"]


def _json(body) -> dict:
    return {"content": json.dumps(body).encode(), "headers": {"content-type": "application/json"}}


BAD = {
    "malformed JSON": (_json(RANK) | {"content": b'{"domain": "app",'}, 400, "body", "malformed_json"),
    "not an object": (_json([1, 2]), 422, "body", "invalid_request"),
    "JSON nested too deeply": (
        {"content": b"[" * 1900 + b"]" * 1900, "headers": {"content-type": "application/json"}},
        400,
        "body",
        "malformed_json",
    ),
    "a lone surrogate in an id": (
        {
            "content": b'{"domain": "app", "user": {"user_id": "\\ud800"}, "candidates": []}',
            "headers": {"content-type": "application/json"},
        },
        422,
        "user.user_id",
        "wrong_type",
    ),
    "a lone surrogate in a column name": (
        {
            "content": b'{"domain": "app", "user": {"\\udc00": 1}, "candidates": []}',
            "headers": {"content-type": "application/json"},
        },
        422,
        "user.\\udc00",
        "extra_feature",
    ),
    "no body": ({}, 422, "body", "invalid_request"),
    "not JSON at all": (
        {"content": b"hello", "headers": {"content-type": "text/plain"}},
        415,
        "body",
        "unsupported_media_type",
    ),
    "not JSON, sent as JSON": (
        {"content": b"hello", "headers": {"content-type": "application/json"}},
        400,
        "body",
        "malformed_json",
    ),
    "no candidates": (_json({"domain": "app", "user": {}}), 422, "candidates", "invalid_request"),
    "an unknown request field": (_json({**RANK, "limit": 3}), 422, "limit", "extra_field"),
    "domain of the wrong type": (_json({**RANK, "domain": 3}), 422, "domain", "invalid_request"),
    "candidates not a list": (_json({**RANK, "candidates": {"item_id": 1}}), 422, "candidates", "invalid_request"),
    "a candidate not an object": (_json({**RANK, "candidates": [3]}), 422, "candidates[0]", "invalid_request"),
    "an unknown domain": (_json({**RANK, "domain": "shop"}), 422, "domain", "unknown_domain"),
    "an unknown raw domain": (
        _json({**RANK, "domain": None, "candidates": [{**CANDIDATES[0], "domain": 9}]}),
        422,
        "candidates[0].domain",
        "unknown_domain",
    ),
    "no domain at all": (_json({**RANK, "domain": None}), 422, "domain", "missing_domain"),
    "a missing feature": (
        _json({**RANK, "candidates": [{"item_id": 1, "tags": "t1"}]}),
        422,
        "candidates[0].dense_0",
        "missing_feature",
    ),
    "an extra feature": (_json({**RANK, "user": {"user_id": 3, "age": 30}}), 422, "user.age", "extra_feature"),
    "a feature given twice": (_json({**RANK, "context": {"user_id": 4}}), 422, "context.user_id", "duplicate_feature"),
    "a dense string": (
        _json({**RANK, "candidates": [{**CANDIDATES[0], "dense_0": "high"}]}),
        422,
        "candidates[0].dense_0",
        "wrong_type",
    ),
    "a null id": (_json({**RANK, "user": {"user_id": None}}), 422, "user.user_id", "wrong_type"),
    "a boolean id": (_json({**RANK, "user": {"user_id": True}}), 422, "user.user_id", "wrong_type"),
    "an object as an id": (_json({**RANK, "user": {"user_id": {"a": 1}}}), 422, "user.user_id", "wrong_type"),
    "NaN": (
        {
            "content": b'{"domain": "app", "user": {"user_id": 3}, "candidates": [{"item_id": 1, "tags": "t", "dense_0": NaN}]}',
            "headers": {"content-type": "application/json"},
        },
        422,
        "candidates[0].dense_0",
        "wrong_type",
    ),
    "too many candidates": (_json({**RANK, "candidates": CANDIDATES * 2}), 422, "candidates", "too_many_candidates"),
    "a body too large": (_json({**RANK, "user": {"user_id": "x" * 5000}}), 413, "body", "body_too_large"),
    "a form body (curl -d without a JSON content type)": (
        {"content": json.dumps(RANK).encode(), "headers": {"content-type": "application/x-www-form-urlencoded"}},
        415,
        "body",
        "unsupported_media_type",
    ),
    "a chunked body too large": (
        {"content": iter([b'{"domain": "app", "candidates": [', b" " * 3000, b" " * 3000]), "headers": {}},
        413,
        "body",
        "body_too_large",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_every_bad_input_is_a_4xx_json_error_naming_the_field(client, case) -> None:
    request, status, field, kind = BAD[case]
    r = client.post("/v1/rank", **request)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert (error["field"], error["kind"]) == (field, kind), error
    assert error["message"] and "\n" not in error["message"]


def test_json_content_types_and_no_content_type_are_read_as_json(client) -> None:
    body = json.dumps(RANK).encode()
    for headers in (
        {},
        {"content-type": "application/json; charset=utf-8"},
        {"content-type": "application/vnd.x+json"},
    ):
        r = client.post("/v1/rank", content=body, headers=headers)
        assert r.status_code == 200 and len(r.json()["scores"]) == len(CANDIDATES), (headers, r.text)


def test_wrong_paths_methods_and_run_kinds(client) -> None:
    for r, status, kind in (
        (client.get("/v2/rank"), 404, "not_found"),
        (client.get("/v1/rank"), 405, "method_not_allowed"),
        (client.post("/v1/retrieve", json={"domain": "app", "user": "3"}), 404, "wrong_run_kind"),
    ):
        assert r.status_code == status and r.json()["error"]["kind"] == kind, r.text
        assert r.json()["error"]["field"] is None


def test_metrics_count_requests_latency_errors_oov_and_unknown_domains(ranking_run) -> None:
    c = TestClient(create_app(Predictor.from_run(ranking_run, fallback_domain="web"), **LIMITS))
    c.post("/v1/rank", json={**RANK, "candidates": [{**CANDIDATES[0], "item_id": "new"}, CANDIDATES[1]]})
    c.post("/v1/rank", json={**RANK, "domain": "shop"})  # unknown: scored as the fallback 'web'
    c.post("/v1/rank", json={**RANK, "user": {}})  # missing user_id
    c.get("/nowhere")
    r = c.get("/metrics")
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = r.text
    assert metric(text, "polyrec_requests_total", endpoint="/v1/rank", status=200) == 2
    assert metric(text, "polyrec_requests_total", endpoint="/v1/rank", status=422) == 1
    assert metric(text, "polyrec_requests_total", endpoint="other", status=404) == 1
    assert metric(text, "polyrec_request_duration_seconds_count", endpoint="/v1/rank") == 3
    assert metric(text, "polyrec_request_duration_seconds_bucket", endpoint="/v1/rank", le="+Inf") == 3
    assert metric(text, "polyrec_request_duration_seconds_sum", endpoint="/v1/rank") > 0
    assert metric(text, "polyrec_errors_total", kind="missing_feature") == 1
    assert metric(text, "polyrec_errors_total", kind="not_found") == 1
    assert metric(text, "polyrec_oov_rows_total", feature="item_id") == 1
    assert metric(text, "polyrec_oov_rows_total", feature="user_id") == 0
    assert metric(text, "polyrec_unknown_domain_total", outcome="fallback") == 1
    assert metric(text, "polyrec_fallback_rows_total") == len(CANDIDATES)
    assert metric(text, "polyrec_scored_rows_total") == 2 + len(CANDIDATES)
    assert metric(text, "polyrec_model_loaded") == 1
    # histogram buckets are cumulative
    buckets = [
        float(v)
        for le, v in re.findall(
            r'polyrec_request_duration_seconds_bucket\{endpoint="/v1/rank",le="([^"]+)"\} (\S+)', text
        )
    ]
    assert buckets == sorted(buckets) and buckets[-1] == 3
    # without a fallback, an unknown domain is refused and counted
    c2 = TestClient(create_app(Predictor.from_run(ranking_run), **LIMITS))
    c2.post("/v1/rank", json={**RANK, "domain": "shop"})
    assert metric(c2.get("/metrics").text, "polyrec_unknown_domain_total", outcome="rejected") == 1


def test_a_request_over_the_timeout_is_a_503_and_the_server_goes_on(predictor) -> None:
    slow = gated(predictor)
    c = TestClient(create_app(slow, **{**LIMITS, "timeout_s": 0.2, "inline_max_candidates": 0}))
    r = c.post("/v1/rank", json=RANK)
    assert r.status_code == 503 and r.json()["error"]["kind"] == "timeout", r.text
    slow.gate.set()
    assert c.post("/v1/rank", json=RANK).status_code == 200
    assert metric(c.get("/metrics").text, "polyrec_errors_total", kind="timeout") == 1


class Where(Predictor):
    """A predictor that records the thread each rank call runs on."""

    def rank(self, *args, **kwargs):
        self.threads.append(threading.current_thread().ident)
        return super().rank(*args, **kwargs)


def test_small_requests_are_scored_on_the_event_loop_and_large_ones_in_a_thread(predictor) -> None:
    where = copy.copy(predictor)
    where.__class__, where.threads = Where, []
    app = create_app(where, **{**LIMITS, "inline_max_candidates": 3})

    @app.get("/loop-thread")
    async def loop_thread() -> dict:
        return {"ident": threading.current_thread().ident}

    with TestClient(app) as c:  # one event loop thread for every request
        loop = c.get("/loop-thread").json()["ident"]
        small, large = {**RANK, "candidates": CANDIDATES[:3]}, {**RANK, "candidates": CANDIDATES[:4]}
        for body in (small, large, small):
            assert c.post("/v1/rank", json=body).status_code == 200
        assert where.threads[0] == where.threads[2] == loop and where.threads[1] != loop
        # the same scores either way, and a bad request on the loop is the same 422
        assert (
            c.post("/v1/rank", json=small).json()["scores"]
            == predictor.rank("app", {"user_id": 3}, {}, CANDIDATES[:3]).logits.tolist()
        )
        bad = c.post("/v1/rank", json={**small, "user": {"user_id": None}})
        assert bad.status_code == 422 and bad.json()["error"]["field"] == "user.user_id"
    with pytest.raises(ValueError, match="inline_max_candidates"):
        create_app(predictor, inline_max_candidates=-1)


def test_not_ready_until_loaded_and_a_failed_reload_keeps_the_old_model(predictor) -> None:
    release, fail = threading.Event(), threading.Event()

    def loader():
        release.wait(20)
        if fail.is_set():
            raise ValueError("run directory '/runs/new' is damaged")
        return predictor

    c = TestClient(create_app(None, loader=loader, **LIMITS))
    assert c.get("/healthz").status_code == 200
    r = c.get("/readyz")
    assert r.status_code == 503 and r.json()["error"]["kind"] == "not_ready"
    r = c.post("/v1/rank", json=RANK)
    assert r.status_code == 503 and r.json()["error"]["kind"] == "not_ready"
    release.set()
    for _ in range(200):
        if c.get("/readyz").status_code == 200:
            break
        time.sleep(0.02)
    assert c.post("/v1/rank", json=RANK).status_code == 200
    fail.set()
    r = c.post("/admin/reload")
    assert r.status_code == 500 and r.json()["error"]["kind"] == "reload_failed"
    assert "is damaged" in r.json()["error"]["message"]
    assert c.post("/v1/rank", json=RANK).status_code == 200  # the old model keeps serving
    text = c.get("/metrics").text
    assert metric(text, "polyrec_reloads_total", result="ok") == 1
    assert metric(text, "polyrec_reloads_total", result="failed") == 1


def test_reload_swaps_the_model_and_requests_in_flight_finish_on_the_old_one(predictor, ranking_run) -> None:
    old = gated(predictor)
    new = Predictor.from_run(ranking_run, fallback_domain="app")
    app = create_app(old, loader=lambda: new, **LIMITS, inline_max_candidates=0)  # scored in a worker thread
    c = TestClient(app)
    answers = []
    thread = threading.Thread(target=lambda: answers.append(c.post("/v1/rank", json=RANK)))
    thread.start()
    assert old.entered.wait(20)
    r = c.post("/admin/reload")
    assert r.status_code == 200 and r.json()["fallback_domain"] == "app"
    assert app.state.polyrec.predictor is new
    assert c.post("/v1/rank", json={**RANK, "domain": "shop"}).json()["fallback"] == len(CANDIDATES)  # the new one
    old.gate.set()
    thread.join(20)
    assert answers[0].status_code == 200 and old.calls == 1  # the in-flight request finished on the old model
    assert answers[0].json()["scores"] == predictor.rank("app", {"user_id": 3}, {}, CANDIDATES).logits.tolist()
    assert TestClient(create_app(predictor, allow_reload=False)).post("/admin/reload").status_code == 404


# ----------------------------------------------------------------------------------------------- retrieval


@pytest.fixture(scope="module")
def retrieval(retrieval_run) -> tuple[RetrievalPredictor, TestClient]:
    p = RetrievalPredictor.from_run(retrieval_run)
    return p, TestClient(create_app(p, **{**LIMITS, "max_k": 20}))


def test_retrieve_answers_the_best_items(retrieval) -> None:
    p, c = retrieval
    domain = p.domains[1]
    r = c.post("/v1/retrieve", json={"domain": domain, "user": 5, "k": 4})
    assert r.status_code == 200, r.text
    want = [vars(i) for i in p.retrieve(domain, "5", k=4)]
    assert r.json() == {"items": want, "domain": domain, "fallback": False}
    assert c.get("/readyz").json()["kind"] == "retrieval"
    for body, field, kind in (
        ({"domain": domain, "user": "99999"}, "user", "unknown_user"),
        ({"domain": "x", "user": "5"}, "domain", "unknown_domain"),
        ({"domain": domain, "user": "5", "k": 0}, "k", "invalid_request"),
        ({"domain": domain, "user": "5", "k": 21}, "k", "invalid_request"),
        ({"domain": domain, "user": "5", "k": "3"}, "k", "invalid_request"),
        ({"domain": domain, "user": None}, "user", "wrong_type"),
        ({"domain": domain}, "user", "invalid_request"),
    ):
        r = c.post("/v1/retrieve", json=body)
        assert r.status_code == 422 and (r.json()["error"]["field"], r.json()["error"]["kind"]) == (field, kind), r.text
    r = c.post("/v1/rank", json=RANK)
    assert r.status_code == 404 and "use /v1/retrieve" in r.json()["error"]["message"]


# ----------------------------------------------------------------------------------------------- a real server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_serve_over_a_real_socket_and_reload_on_sighup(ranking_run, predictor, tmp_path) -> None:
    port = _free_port()
    code = (
        "import torch; torch.set_num_threads(1)\n"
        "from polyrec.serving.server import serve\n"
        f"serve({str(ranking_run)!r}, host='127.0.0.1', port={port}, log_level='warning')\n"
    )
    log = open(tmp_path / "server.log", "w+")  # noqa: SIM115 (closed below)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=log, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if _get(f"{base}/readyz")[0] == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
            time.sleep(0.1)
        request = urllib.request.Request(
            f"{base}/v1/rank", data=json.dumps(RANK).encode(), headers={"content-type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=10) as r:
            body = json.loads(r.read())
        assert body["scores"] == predictor.rank("app", {"user_id": 3}, {}, CANDIDATES).logits.tolist()
        status, text = _get(f"{base}/v1/nothing")
        assert status == 404 and json.loads(text)["error"]["kind"] == "not_found"
        proc.send_signal(signal.SIGHUP)
        for _ in range(200):
            if metric(_get(f"{base}/metrics")[1], "polyrec_reloads_total", result="ok") == 1:
                break
            time.sleep(0.05)
        text = _get(f"{base}/metrics")[1]
        assert metric(text, "polyrec_reloads_total", result="ok") == 1, (tmp_path / "server.log").read_text()
        assert metric(text, "polyrec_requests_total", endpoint="/v1/rank", status=200) == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    # uvicorn shuts down gracefully, then lets the SIGTERM it caught end the process
    assert proc.returncode in (0, -signal.SIGTERM), (tmp_path / "server.log").read_text()


# ----------------------------------------------------------------------------------------------- fuzzing


def test_a_fuzz_of_the_openapi_schema_finds_no_5xx(predictor) -> None:
    schemathesis = pytest.importorskip("schemathesis")
    app = create_app(predictor, max_candidates=16, max_body_bytes=20_000, timeout_s=10.0)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app).exclude(path="/admin/reload")
    seen: dict[tuple[str, int], int] = {}
    # Training set torch's process-wide flush of subnormal floats, which Hypothesis' float strategies refuse.
    flushing = bool((torch.tensor([1e-40]) * 1.0).item() == 0.0)
    torch.set_flush_denormal(False)
    try:
        _fuzz(schemathesis, schema, seen)
    finally:
        torch.set_flush_denormal(flushing)
    assert any(status == 200 for (path, status) in seen if path == "/v1/rank"), seen
    assert any(400 <= status < 500 for (path, status) in seen if path == "/v1/rank"), seen


def _fuzz(schemathesis, schema, seen: dict[tuple[str, int], int]) -> None:
    from hypothesis import HealthCheck, given, settings

    for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):

        @given(case=schema.as_strategy(generation_mode=mode))
        @settings(
            max_examples=25,
            deadline=5000,  # ms per example
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        def check(case) -> None:
            r = case.call()
            seen[(case.path, r.status_code)] = seen.get((case.path, r.status_code), 0) + 1
            assert r.status_code < 500, (case.method, case.path, case.body, r.text)
            ctype = r.headers.get("content-type") or [""]
            if r.status_code >= 400 and (ctype[0] if isinstance(ctype, list) else ctype).startswith("application/json"):
                assert set(r.json()["error"]) == {"field", "message", "kind"}

        check()


def test_cli_serve_refuses_a_missing_run_and_an_unknown_backend(tmp_path) -> None:
    from typer.testing import CliRunner

    from polyrec.cli import app

    runner = CliRunner()
    r = runner.invoke(app, ["serve", str(tmp_path / "none")])
    assert r.exit_code == 2 and "is not a finished run directory" in r.output
    r = runner.invoke(app, ["serve", str(tmp_path / "none"), "--workers", "0"])
    assert r.exit_code == 2 and "workers" in r.output
