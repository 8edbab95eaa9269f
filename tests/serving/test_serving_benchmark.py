"""A small run of the serving load test (benchmarks/serving.py) against the tiny ranking run: a real server
subprocess, a short closed loop, the JSON and Markdown it writes, and backends the server refuses."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "serving.py"


def _bench():
    # Not "serving": that is the name of this test package.
    spec = importlib.util.spec_from_file_location("serving_benchmark", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["serving_benchmark"] = module
    spec.loader.exec_module(module)
    return module


def test_a_small_load_test_answers_every_request_and_writes_its_results(ranking_run, tmp_path) -> None:
    bench = _bench()
    affinity = os.sched_getaffinity(0)
    out = tmp_path / "out"
    args = ["--run", str(ranking_run), "--backends", "eager,onnx,nonsense", "--requests", "40", "--concurrency", "2"]
    args += ["--candidates", "10", "--warmup", "4", "--max-seconds", "60", "--out", str(out)]
    res = bench.main(args)
    assert os.sched_getaffinity(0) == affinity  # the load generator's pinning is undone

    saved = json.loads((out / "serving.json").read_text())
    assert saved == json.loads(json.dumps(res))
    eager = saved["backends"]["eager"]
    assert eager["status"] == "ok", eager
    assert eager["failures"] == 0 and eager["warmup_failures"] == 0, eager
    assert eager["succeeded"] == eager["sent"] == 40 and not eager["time_bound_hit"]
    lat = eager["latency_ms"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert eager["requests_per_s"] > 0 and eager["candidates_per_s"] > 0
    assert isinstance(eager["target_met"], bool)
    assert eager["server_exit_code"] in (0, -15)  # a clean shutdown on SIGTERM

    # A backend the server refuses (onnx, until it is built) is "not available" with the server's message; one it
    # cannot start with is an error; either way the run goes on.
    onnx = saved["backends"]["onnx"]
    assert onnx["status"] in ("ok", "not available"), onnx
    if onnx["status"] == "not available":
        assert "onnx" in onnx["message"] and "| onnx | not available |" in (out / "serving.md").read_text()
    else:
        assert onnx["failures"] == 0, onnx
    other = saved["backends"]["nonsense"]
    assert other["status"] == "error" and "unknown backend 'nonsense'" in other["message"]

    load = saved["load"]
    assert (load["requests"], load["concurrency"], load["candidates"], load["warmup"]) == (40, 2, 10, 4)
    assert load["user_columns"][0] == "user_id" and "item_id" in load["candidate_columns"]
    assert saved["run"]["domains"] == ["web", "app"] and saved["target"] == {"p99_ms": 10.0, "candidates_per_s": 50_000}
    assert saved["pinning"]["server_torch_threads"] == 1 and saved["pinning"]["server_core"] in affinity
    assert saved["machine"]["cpu_model"] and {"polyrec", "torch", "fastapi", "uvicorn"} <= set(saved["versions"])
    assert saved["command"].startswith("python benchmarks/serving.py --run ")

    text = (out / "serving.md").read_text()
    assert "| eager | ok | 40 / 0 |" in text and "| nonsense | error |" in text and "p99 <= 10 ms" in text


def test_an_answer_that_is_not_a_200_with_every_score_is_a_failure() -> None:
    bench = _bench()
    error = json.dumps({"error": {"kind": "timeout", "message": "too slow"}}).encode()
    assert bench._failure(503, error, None, 3) == ("http_503", "503 timeout: too slow")
    assert bench._failure(200, json.dumps({"scores": [0.1, 0.2]}).encode(), None, 3)[0] == "bad_answer"
    assert bench._failure(200, b"not json", None, 3)[0] == "bad_answer"
    assert bench._failure(None, b"", "ConnectionResetError: reset", 3) == ("connection", "ConnectionResetError: reset")
    assert bench._failure(200, json.dumps({"scores": [0.1, 0.2, 0.3]}).encode(), None, 3) is None
