"""An HTTP server over a trained run: ranking (``POST /v1/rank``), retrieval (``POST /v1/retrieve``), health,
readiness, Prometheus metrics and hot reload.

:func:`create_app` builds the FastAPI application around a predictor (:mod:`polyrec.serving.predictor`);
:func:`serve` loads a run directory and runs it with uvicorn.

Endpoints:

- ``POST /v1/rank`` ``{domain, user: {...}, context: {...}, candidates: [{...}, ...]}`` →
  ``{scores, probabilities, oov, domains, fallback}``: one logit and one probability per candidate, in
  candidate order; each candidate row is ``user`` + ``context`` + the candidate
  (:meth:`~polyrec.serving.predictor.Predictor.rank`); ``oov`` counts the rows with an out-of-vocabulary id
  per feature. Keys are the raw column names of the run's data (``GET /readyz`` lists them).
- ``POST /v1/retrieve`` ``{domain, user, k, exclude_seen}`` → ``{items: [{rank, item, item_index, score}]}``
  for a retrieval run (:class:`~polyrec.serving.predictor.RetrievalPredictor`). Each endpoint answers 404
  when the loaded run is of the other kind.
- ``GET /healthz``: the process is up (200 always). ``GET /readyz``: 200 with what is loaded once a model
  is, 503 before. ``GET /metrics``: Prometheus text exposition format (version 0.0.4).
- ``POST /admin/reload``: load the run again (the run directory, or what a loader callable returns) and
  swap it in. The same happens on ``SIGHUP`` under :func:`serve`.

Choices made:

- **Errors.** Every error answer is JSON ``{"error": {"field", "message", "kind"}}``: ``field`` is where the
  problem is (``body``, ``candidates``, ``candidates[3].item_id``, ``user.gender``, ``domain``; ``null``
  when it is no field's), ``message`` says what is wrong and how to fix it, ``kind`` is the class counted
  in ``/metrics``. Bad input is always a 4xx: malformed JSON 400 (``malformed_json``); a body sent with a
  ``Content-Type`` other than JSON 415 (``unsupported_media_type``; no header is read as JSON); a body over
  ``max_body_bytes`` 413 (``body_too_large``, refused from its ``Content-Length`` before it is read, or
  as soon as a chunked body passes the limit); more than ``max_candidates`` candidates 422
  (``too_many_candidates``); a request of the wrong shape 422 (``invalid_request``, ``extra_field``);
  missing or extra features, values of the wrong type, an unknown domain or user 422 (the predictor's
  :class:`~polyrec.serving.predictor.InputError` kinds); an unknown path 404, a wrong method 405. The
  only 5xx answers are 503 (``not_ready``: no model loaded yet; ``timeout``: scoring took longer than
  ``timeout_s``) and 500 (``internal``: a defect, logged with its traceback, and ``reload_failed``: the
  new run could not be loaded, the old one keeps serving).
- **Request models.** The request bodies are pydantic models, so ``/openapi.json`` describes them
  (``max_candidates`` and the ``k`` bound are in the schema). A feature value is declared as a string, a
  number or a list of ids in the schema, and checked by the predictor, whose messages name the column
  and its kind (a null, a boolean, a number for a multi-valued column, a string for a dense one).
- **Where scoring runs.** A ``/v1/rank`` request of at most ``inline_max_candidates`` (256) candidates is
  scored on the event loop itself: it takes about a millisecond (100 candidates, STAR, one core), and
  handing it to a worker thread cost more than it bought. Measured with ``benchmarks/serving.py``
  (4 clients, one core): the thread hop and the GIL shared by concurrent scoring threads raised p99 from
  7.6 to 11.0 ms (eager) and cut throughput by 15-20 %; a single scoring thread (a limiter of 1) cut it
  by 25 % (ONNX). A larger request, and every ``/v1/retrieve``, is scored in a worker thread under
  ``timeout_s``: after it the request gets its 503 answer. A thread cannot be stopped, so the
  computation finishes in the background and its result is dropped; the limits on the body and the
  candidates bound how long that can be. ``inline_max_candidates=0`` puts every request in a thread.
- **Reload is atomic.** The predictor is one reference: a request reads it once when it starts and
  finishes on that one; a reload builds the new predictor completely (files checked, model built) before
  the reference is swapped, so no request ever sees a half-loaded model. Reloads run one at a time.
  ``POST /admin/reload`` takes no body: it reloads what the server was started with (replace the run
  directory, or point a symlink at a new one, then reload), so a client cannot make the server open other
  paths. ``allow_reload=False`` removes the endpoint.
- **Metrics** are kept in the process (a lock around plain counters) and written by hand in the text
  format, no dependency: ``polyrec_requests_total{endpoint,status}``, the latency histogram
  ``polyrec_request_duration_seconds{endpoint}``, ``polyrec_errors_total{kind}``,
  ``polyrec_oov_rows_total{feature}``, ``polyrec_unknown_domain_total{outcome="rejected"|"fallback"}``
  (requests with an unknown domain, refused or scored as the fallback domain),
  ``polyrec_fallback_rows_total``, ``polyrec_scored_rows_total``, ``polyrec_reloads_total{result}``,
  ``polyrec_model_loaded`` and ``polyrec_model_info``. The endpoint label is the route (``other`` for an
  unknown path), so its values are bounded. With several workers each process has its own counters.
- **Workers.** ``serve(workers=1)`` runs uvicorn in this process and reloads on SIGHUP in place; with
  ``workers > 1`` uvicorn's supervisor runs the workers, each builds its app from the settings passed in
  the environment (``POLYREC_SERVE``), and SIGHUP makes the supervisor restart them one by one, each
  loading the run afresh.
- **Dependencies.** FastAPI and uvicorn are the ``serve`` extra (``pip install 'polyrec[serve]'``); the
  predictor needs neither. This module has no ``from __future__ import annotations``: the request models
  are built inside :func:`create_app` (its limits are in their schema), and FastAPI must resolve the
  endpoints' annotations to them at run time.
"""

import contextlib
import gc
import json
import logging
import math
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import anyio
import anyio.to_thread
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, create_model
from starlette.exceptions import HTTPException as StarletteHTTPException

from .predictor import InputError, Predictor, RetrievalPredictor, load_predictor

__all__ = ["ENV_SETTINGS", "app_from_environment", "create_app", "serve"]

logger = logging.getLogger("polyrec.serving")

#: The environment variable that carries :func:`serve`'s settings to uvicorn's worker processes.
ENV_SETTINGS = "POLYREC_SERVE"
#: Upper bounds (seconds) of the latency histogram's buckets.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: The endpoints whose body is JSON: another Content-Type is a 415 answer.
JSON_ENDPOINTS = frozenset({"/v1/rank", "/v1/retrieve"})
ENDPOINTS = (
    "/v1/rank",
    "/v1/retrieve",
    "/healthz",
    "/readyz",
    "/metrics",
    "/admin/reload",
    "/openapi.json",
    "/docs",
    "/redoc",
)

AnyPredictor = Predictor | RetrievalPredictor

# ----------------------------------------------------------------------------------------------- request models

_ID_SCHEMA = {"anyOf": [{"type": "string"}, {"type": "integer"}, {"type": "number"}]}
#: A raw feature value: an id (string or number), a dense number, or a multi-valued feature's ids. Declared
#: for the schema; the predictor checks it against the column's kind.
FeatureValue = Annotated[
    Any,
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string"},
                {"type": "integer"},
                {"type": "number"},
                {"type": "array", "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]}},
            ],
            "description": "a raw value as in the source data: an id, a number, or a multi-valued feature's ids",
        }
    ),
]
UserId = Annotated[Any, WithJsonSchema({**_ID_SCHEMA, "description": "the user's raw id, as in the source data"})]


class ErrorBody(BaseModel):
    field: str | None = Field(description="where the problem is (body, candidates[3].item_id, domain), or null")
    message: str = Field(description="what is wrong and how to fix it")
    kind: str = Field(description="the class of error, as counted in /metrics")


class ErrorResponse(BaseModel):
    error: ErrorBody


class RankResponse(BaseModel):
    scores: list[float] = Field(description="the model's logit of each candidate, in candidate order")
    probabilities: list[float] = Field(description="sigmoid(score) of each candidate")
    oov: dict[str, int] = Field(description="per sparse or multi-valued feature, the candidates with an OOV id")
    domains: list[str] = Field(description="the domain each candidate was scored as")
    fallback: int = Field(description="candidates scored as the fallback domain (their domain was unknown)")


class RetrievedItemModel(BaseModel):
    rank: int
    item: str
    item_index: int
    score: float


class RetrieveResponse(BaseModel):
    items: list[RetrievedItemModel]
    domain: str
    fallback: bool = Field(description="whether the domain was unknown and the fallback domain answered")


def _request_models(max_candidates: int, max_k: int) -> tuple[type[BaseModel], type[BaseModel]]:
    """The request bodies, with this app's limits in their schema."""
    strict = ConfigDict(extra="forbid")
    rank = create_model(
        "RankRequest",
        __config__=strict,
        __doc__="Candidates to score for one user in one context.",
        domain=(
            str | None,
            Field(None, description="the domain name; null: every candidate carries the run's domain column"),
        ),
        user=(dict[str, FeatureValue], Field(default_factory=dict, description="the user's features")),
        context=(dict[str, FeatureValue], Field(default_factory=dict, description="the context's features")),
        candidates=(
            list[dict[str, FeatureValue]],
            Field(..., max_length=max_candidates, description=f"the items to score (at most {max_candidates})"),
        ),
    )
    retrieve = create_model(
        "RetrieveRequest",
        __config__=strict,
        __doc__="The best items of a domain's corpus for one user.",
        domain=(str, Field(..., description="the domain name")),
        user=(UserId, Field(..., description="the user's raw id")),
        k=(int, Field(100, ge=1, le=max_k, strict=True, description=f"how many items (1 to {max_k})")),
        exclude_seen=(bool, Field(True, strict=True, description="leave out the items the user has a positive for")),
    )
    return rank, retrieve


# ----------------------------------------------------------------------------------------------- metrics


def _label(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(x: float) -> str:
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    return repr(float(x)) if not float(x).is_integer() else str(int(x))


class Metrics:
    """The server's counters, written in the Prometheus text exposition format by :meth:`render`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: Counter[tuple[str, int]] = Counter()
        self.latency: dict[str, list[int]] = {}
        self.latency_sum: Counter[str] = Counter()
        self.latency_count: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.oov: Counter[str] = Counter()
        self.unknown_domain: Counter[str] = Counter()
        self.fallback_rows = 0
        self.scored_rows = 0
        self.reloads: Counter[str] = Counter()

    def request(self, endpoint: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(endpoint, status)] += 1
            buckets = self.latency.setdefault(endpoint, [0] * len(LATENCY_BUCKETS))
            for i, bound in enumerate(LATENCY_BUCKETS):
                if seconds <= bound:
                    buckets[i] += 1
            self.latency_sum[endpoint] += seconds
            self.latency_count[endpoint] += 1

    def error(self, kind: str) -> None:
        with self._lock:
            self.errors[kind] += 1
            if kind == "unknown_domain":
                self.unknown_domain["rejected"] += 1

    def scored(self, rows: int, oov: dict[str, int], fallback: int) -> None:
        with self._lock:
            self.scored_rows += rows
            for feature, n in oov.items():
                self.oov[feature] += n
            if fallback:
                self.unknown_domain["fallback"] += 1
                self.fallback_rows += fallback

    def reload(self, result: str) -> None:
        with self._lock:
            self.reloads[result] += 1

    def render(self, predictor: AnyPredictor | None, oov_features: tuple[str, ...] = ()) -> str:
        out: list[str] = []

        def family(name: str, kind: str, help_: str, samples: list[tuple[str, dict[str, Any], float]]) -> None:
            out.append(f"# HELP {name} {help_}")
            out.append(f"# TYPE {name} {kind}")
            for sample, labels, value in samples:
                text = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
                out.append(f"{sample}{{{text}}} {_number(value)}" if text else f"{sample} {_number(value)}")

        with self._lock:
            family(
                "polyrec_requests_total",
                "counter",
                "HTTP requests by endpoint and status code.",
                [
                    ("polyrec_requests_total", {"endpoint": e, "status": s}, n)
                    for (e, s), n in sorted(self.requests.items())
                ],
            )
            samples = []
            for endpoint in sorted(self.latency):
                for bound, n in zip(LATENCY_BUCKETS, self.latency[endpoint]):
                    samples.append(
                        ("polyrec_request_duration_seconds_bucket", {"endpoint": endpoint, "le": _number(bound)}, n)
                    )
                count = self.latency_count[endpoint]
                samples.append(("polyrec_request_duration_seconds_bucket", {"endpoint": endpoint, "le": "+Inf"}, count))
                samples.append(
                    ("polyrec_request_duration_seconds_sum", {"endpoint": endpoint}, self.latency_sum[endpoint])
                )
                samples.append(("polyrec_request_duration_seconds_count", {"endpoint": endpoint}, count))
            family("polyrec_request_duration_seconds", "histogram", "Time to answer a request, by endpoint.", samples)
            family(
                "polyrec_errors_total",
                "counter",
                "Error answers by kind.",
                [("polyrec_errors_total", {"kind": k}, n) for k, n in sorted(self.errors.items())],
            )
            features = list(dict.fromkeys([*oov_features, *sorted(self.oov)]))
            family(
                "polyrec_oov_rows_total",
                "counter",
                "Scored rows whose id of a feature was out of the vocabulary (the OOV bucket), by feature.",
                [("polyrec_oov_rows_total", {"feature": f}, self.oov.get(f, 0)) for f in features],
            )
            family(
                "polyrec_unknown_domain_total",
                "counter",
                "Requests with an unknown domain: refused, or scored as the fallback domain.",
                [
                    ("polyrec_unknown_domain_total", {"outcome": o}, self.unknown_domain.get(o, 0))
                    for o in ("rejected", "fallback")
                ],
            )
            family(
                "polyrec_fallback_rows_total",
                "counter",
                "Rows scored as the fallback domain.",
                [("polyrec_fallback_rows_total", {}, self.fallback_rows)],
            )
            family(
                "polyrec_scored_rows_total",
                "counter",
                "Rows scored (candidates ranked).",
                [("polyrec_scored_rows_total", {}, self.scored_rows)],
            )
            family(
                "polyrec_reloads_total",
                "counter",
                "Model reloads by result.",
                [("polyrec_reloads_total", {"result": r}, self.reloads.get(r, 0)) for r in ("ok", "failed")],
            )
        family(
            "polyrec_model_loaded",
            "gauge",
            "1 when a model is loaded and answering.",
            [("polyrec_model_loaded", {}, 1 if predictor is not None else 0)],
        )
        if predictor is not None:
            d = predictor.describe()
            info = {k: d.get(k) or "" for k in ("kind", "model", "backend", "run_dir")}
            family("polyrec_model_info", "gauge", "The loaded run.", [("polyrec_model_info", info, 1)])
        return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------------------------- errors


class _Failure(Exception):
    """An error answer raised inside an endpoint."""

    def __init__(self, status: int, field: str | None, message: str, kind: str) -> None:
        super().__init__(message)
        self.status, self.field, self.message, self.kind = status, field, message, kind


def _text(value: str | None) -> str | None:
    """``value`` safe to encode as UTF-8 (a lone surrogate from a request's JSON is written escaped)."""
    return None if value is None else value.encode("utf-8", "backslashreplace").decode("utf-8")


def _error(metrics: Metrics, status: int, field: str | None, message: str, kind: str) -> JSONResponse:
    metrics.error(kind)
    body = {"error": {"field": _text(field), "message": _text(message), "kind": kind}}
    return JSONResponse(body, status_code=status)


def _field(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = list(loc)
    if parts and parts[0] == "body":
        parts = parts[1:]
    if not parts:
        return "body"
    text = ""
    for p in parts:
        text += f"[{p}]" if isinstance(p, int) else (f".{p}" if text else str(p))
    return text


def _validation_failure(exc: RequestValidationError, max_candidates: int) -> tuple[int, str, str, str]:
    errors = exc.errors()
    first = errors[0] if errors else {"loc": ("body",), "msg": "invalid request", "type": "invalid"}
    loc, kind_in = tuple(first.get("loc") or ("body",)), str(first.get("type", ""))
    field = _field(loc)
    if kind_in == "json_invalid":
        detail = (first.get("ctx") or {}).get("error") or first.get("msg")
        return 400, "body", f"the body is not valid JSON ({detail}); send a JSON object", "malformed_json"
    if kind_in == "too_long" and field == "candidates":
        return (
            422,
            "candidates",
            f"too many candidates: at most {max_candidates} per request; split them over several requests",
            "too_many_candidates",
        )
    if kind_in == "extra_forbidden":
        return 422, field, f"{field.rsplit('.', 1)[-1]!r} is not a field of this request; remove it", "extra_field"
    if kind_in == "missing" and field == "body":
        return 422, "body", "the request needs a JSON object body", "invalid_request"
    if kind_in == "missing":
        return 422, field, f"{field} is required", "invalid_request"
    got = first.get("input")
    shown = json.dumps(got, default=str) if not isinstance(got, (dict, list)) else type(got).__name__
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return 422, field, f"{first.get('msg', 'invalid value')} (got {shown})", "invalid_request"


# ----------------------------------------------------------------------------------------------- middleware


class _BodyLimit:
    """Refuse a request body over ``limit`` bytes (413) before the app parses it."""

    def __init__(self, app: Any, limit: int, metrics: Metrics) -> None:
        self.app, self.limit, self.metrics = app, limit, metrics

    async def _refuse(self, scope: Any, receive: Any, send: Any, status: int, message: str, kind: str) -> None:
        await _error(self.metrics, status, "body", message, kind)(scope, receive, send)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = f"the body is larger than {self.limit:,} bytes; send fewer or smaller candidates"
        headers = dict(scope.get("headers") or [])
        if scope.get("path") in JSON_ENDPOINTS and b"content-type" not in headers:
            # No Content-Type: the body is read as the JSON these endpoints take (FastAPI would not parse it).
            scope = {**scope, "headers": [*scope.get("headers", []), (b"content-type", b"application/json")]}
        elif scope.get("path") in JSON_ENDPOINTS:
            kind = headers[b"content-type"].split(b";", 1)[0].strip().lower()
            if kind != b"application/json" and not kind.endswith(b"+json"):
                shown = headers[b"content-type"].decode("latin-1")[:80]
                message = (
                    f"the body must be JSON, sent with Content-Type: application/json, got {shown!r} (curl: add "
                    "-H 'Content-Type: application/json')"
                )
                await self._refuse(scope, receive, send, 415, message, "unsupported_media_type")
                return
        length = headers.get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                await self._refuse(scope, receive, send, 400, "Content-Length is not a number", "invalid_request")
                return
            if declared > self.limit:
                await self._refuse(scope, receive, send, 413, too_large, "body_too_large")
                return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await self._refuse(scope, receive, send, 413, too_large, "body_too_large")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay() -> Any:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class _Timing:
    """Count every request by endpoint and status, and time it."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        endpoint = path if path in ENDPOINTS else "other"
        status = 500
        start = time.perf_counter()

        async def timed_send(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        finally:
            self.metrics.request(endpoint, status, time.perf_counter() - start)


# ----------------------------------------------------------------------------------------------- state


class _State:
    """The loaded predictor (one reference, swapped whole) and how to load it again."""

    def __init__(self, predictor: AnyPredictor | None, loader: Callable[[], AnyPredictor] | None, metrics: Metrics):
        self.predictor = predictor
        self.loader = loader
        self.metrics = metrics
        self.load_error: str | None = None
        self._reload_lock = threading.Lock()

    def reload(self) -> AnyPredictor:
        """Load with the loader and swap the new predictor in; on failure keep the old one and raise."""
        if self.loader is None:
            raise RuntimeError("this server was given a predictor without a loader or a run directory")
        with self._reload_lock:
            try:
                new = self.loader()
            except Exception as exc:
                self.metrics.reload("failed")
                self.load_error = " ".join(str(exc).split()) or type(exc).__name__
                logger.exception("loading the run failed; the previous model (if any) keeps serving")
                raise
            self.predictor = new  # one assignment: a request holds the old or the new one, never a mix
            self.load_error = None
            _settle_heap()
            self.metrics.reload("ok")
            logger.info("loaded %s", new.describe())
            return new

    def reload_in_background(self) -> threading.Thread:
        def run() -> None:
            with contextlib.suppress(Exception):  # logged and counted by reload
                self.reload()

        thread = threading.Thread(target=run, name="polyrec-reload", daemon=True)
        thread.start()
        return thread


def _settle_heap() -> None:
    """Collect what loading left and move every object alive now out of the garbage collector's view.

    A loaded model, its vocabularies and the imported libraries are a few million long-lived objects; a
    full collection walks them all (tens of ms, measured as the load test's worst latencies) though none of
    them is garbage. Frozen (:func:`gc.freeze`), they are skipped; the objects of each request are still
    collected as before. Called once a model is loaded, and again after each reload (the previous model's
    objects are unfrozen and collected first)."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def _default_loader(predictor: AnyPredictor | None) -> Callable[[], AnyPredictor] | None:
    run_dir = getattr(predictor, "run_dir", None)
    if predictor is None or run_dir is None:
        return None
    backend, fallback = predictor.backend_name, predictor.fallback_domain
    return lambda: load_predictor(run_dir, backend=backend, fallback_domain=fallback)


# ----------------------------------------------------------------------------------------------- the app


def create_app(
    predictor: AnyPredictor | None = None,
    *,
    max_candidates: int = 1000,
    max_body_bytes: int = 1_000_000,
    timeout_s: float = 1.0,
    max_k: int = 1000,
    loader: Callable[[], AnyPredictor] | None = None,
    allow_reload: bool = True,
    inline_max_candidates: int = 256,
) -> FastAPI:
    """The FastAPI application serving ``predictor`` (see the module docstring for the endpoints).

    Args:
        predictor: a loaded :class:`~polyrec.serving.predictor.Predictor` or
            :class:`~polyrec.serving.predictor.RetrievalPredictor`; ``None``: ``loader`` loads one in the
            background (``/readyz`` answers 503 until it is loaded).
        max_candidates: the most candidates one ``/v1/rank`` request may hold.
        max_body_bytes: the largest request body.
        timeout_s: the longest a request may take to score.
        max_k: the largest ``k`` of ``/v1/retrieve``.
        loader: what ``POST /admin/reload`` and SIGHUP load (default: the predictor's run directory again,
            with its backend and fallback domain).
        allow_reload: serve ``POST /admin/reload``.
        inline_max_candidates: a ``/v1/rank`` request of at most this many candidates is scored on the event
            loop, without a worker thread and so without ``timeout_s`` (0: every request in a thread).

    The app's ``state.polyrec`` holds the loaded predictor (``.predictor``) and ``.reload()``.
    """
    for name, value in (("max_candidates", max_candidates), ("max_body_bytes", max_body_bytes), ("max_k", max_k)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if (
        isinstance(inline_max_candidates, bool)
        or not isinstance(inline_max_candidates, int)
        or inline_max_candidates < 0
    ):
        raise ValueError(f"inline_max_candidates must be an integer >= 0, got {inline_max_candidates!r}")
    if not (isinstance(timeout_s, (int, float)) and timeout_s > 0 and math.isfinite(timeout_s)):
        raise ValueError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
    if predictor is None and loader is None:
        raise ValueError("create_app needs a predictor or a loader")
    metrics = Metrics()
    state = _State(predictor, loader or _default_loader(predictor), metrics)
    RankRequest, RetrieveRequest = _request_models(max_candidates, max_k)
    errors = {
        status: {"model": ErrorResponse, "description": text}
        for status, text in (
            (400, "malformed JSON"),
            (404, "the loaded run is of the other kind"),
            (413, "the body is too large"),
            (415, "the body is not sent as application/json"),
            (422, "the request or its features cannot be scored"),
            (503, "no model loaded yet, or scoring timed out"),
        )
    }

    app = FastAPI(
        title="polyrec serving",
        description="Scores raw feature rows with a trained polyrec run. Errors: {error: {field, message, kind}}.",
        version=_version(),
    )
    app.state.polyrec = state

    @app.exception_handler(RequestValidationError)
    async def _on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        status, field, message, kind = _validation_failure(exc, max_candidates)
        return _error(metrics, status, field, message, kind)

    @app.exception_handler(StarletteHTTPException)
    async def _on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:  # FastAPI could not parse the body (nested too deeply, say)
            message = f"the body could not be parsed ({exc.detail}); send a JSON object"
            return _error(metrics, 400, "body", message, "malformed_json")
        kinds = {404: "not_found", 405: "method_not_allowed"}
        kind = kinds.get(exc.status_code, "http_error")
        message = {
            404: f"no endpoint {request.url.path!r}; see /openapi.json",
            405: f"{request.method} is not allowed on {request.url.path!r}; see /openapi.json",
        }.get(exc.status_code, str(exc.detail))
        return _error(metrics, exc.status_code, None, message, kind)

    @app.exception_handler(_Failure)
    async def _on_failure(request: Request, exc: _Failure) -> JSONResponse:
        return _error(metrics, exc.status, exc.field, exc.message, exc.kind)

    def current(kind: type) -> Any:
        pred = state.predictor
        if pred is None:
            detail = f" (the last load failed: {state.load_error})" if state.load_error else ""
            raise _Failure(503, None, f"no model is loaded yet{detail}; retry when /readyz answers 200", "not_ready")
        if not isinstance(pred, kind):
            other = "/v1/retrieve" if isinstance(pred, RetrievalPredictor) else "/v1/rank"
            what = "a retrieval" if isinstance(pred, RetrievalPredictor) else "a ranking"
            raise _Failure(404, None, f"this server holds {what} run; use {other}", "wrong_run_kind")
        return pred

    async def run_scoring(fn: Callable[[], Any], inline: bool = False) -> Any:
        try:
            if inline:
                return fn()
            with anyio.fail_after(timeout_s):
                return await anyio.to_thread.run_sync(fn, abandon_on_cancel=True)
        except TimeoutError:
            raise _Failure(
                503, None, f"scoring took longer than {timeout_s:g} s; retry, or send fewer candidates", "timeout"
            ) from None
        except InputError as exc:
            raise _Failure(422, exc.field, exc.message, exc.kind) from None
        except Exception:
            logger.exception("scoring failed")
            raise _Failure(500, None, "internal error while scoring (logged by the server)", "internal") from None

    @app.post("/v1/rank", response_model=RankResponse, responses=errors, summary="Score candidates for a user")
    async def rank(body: RankRequest) -> dict[str, Any]:  # type: ignore[valid-type]
        pred: Predictor = current(Predictor)
        result = await run_scoring(
            lambda: pred.rank(body.domain, body.user, body.context, body.candidates),
            inline=len(body.candidates) <= inline_max_candidates,
        )
        metrics.scored(len(result), result.oov, result.fallback)
        return {
            "scores": result.logits.tolist(),
            "probabilities": result.probabilities.tolist(),
            "oov": result.oov,
            "domains": list(result.domain),
            "fallback": result.fallback,
        }

    @app.post("/v1/retrieve", response_model=RetrieveResponse, responses=errors, summary="The best items for a user")
    async def retrieve(body: RetrieveRequest) -> dict[str, Any]:  # type: ignore[valid-type]
        pred: RetrievalPredictor = current(RetrievalPredictor)

        def answer() -> dict[str, Any]:
            index, fallback = pred.domain_index(body.domain)
            items = pred.retrieve(pred.domains[index], body.user, body.k, body.exclude_seen)
            return {"items": [vars(i) for i in items], "domain": pred.domains[index], "fallback": fallback}

        result = await run_scoring(answer)
        metrics.scored(1, {}, int(result["fallback"]))
        return result

    @app.get("/healthz", summary="The process is up")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="A model is loaded", responses={503: {"model": ErrorResponse}})
    async def readyz() -> Any:
        pred = state.predictor
        if pred is None:
            detail = f"; the last load failed: {state.load_error}" if state.load_error else "; loading"
            return _error(metrics, 503, None, f"no model is loaded yet{detail}", "not_ready")
        return {"ready": True, **pred.describe()}

    @app.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
    async def metrics_endpoint() -> PlainTextResponse:
        pred = state.predictor
        features = pred.oov_features if isinstance(pred, Predictor) else ()
        return PlainTextResponse(metrics.render(pred, features), media_type="text/plain; version=0.0.4; charset=utf-8")

    if allow_reload:

        @app.post(
            "/admin/reload",
            summary="Load the run again and swap it in",
            responses={500: {"model": ErrorResponse, "description": "the run could not be loaded"}},
        )
        async def reload() -> dict[str, Any]:
            if state.loader is None:
                raise _Failure(
                    404, None, "this server has no run directory or loader to reload from", "reload_unavailable"
                )
            try:
                new = await anyio.to_thread.run_sync(state.reload)
            except Exception:
                raise _Failure(
                    500,
                    None,
                    f"the run could not be loaded ({state.load_error}); the previous model keeps serving",
                    "reload_failed",
                ) from None
            return {"reloaded": True, **new.describe()}

    app.add_middleware(_BodyLimit, limit=max_body_bytes, metrics=metrics)
    app.add_middleware(_Timing, metrics=metrics)  # outermost: sees every answer, the 413s included
    if predictor is None:
        state.reload_in_background()
    return app


def _version() -> str:
    from .. import __version__

    return __version__


# ----------------------------------------------------------------------------------------------- serving


def _settings(run_dir: str | Path, backend: str, fallback_domain: str | None, limits: dict[str, Any]) -> dict[str, Any]:
    return {"run_dir": str(run_dir), "backend": backend, "fallback_domain": fallback_domain, **limits}


def _app_from_settings(settings: dict[str, Any]) -> FastAPI:
    run_dir, backend, fallback = settings["run_dir"], settings["backend"], settings.get("fallback_domain")
    keys = ("max_candidates", "max_body_bytes", "timeout_s", "max_k", "allow_reload", "inline_max_candidates")
    limits = {k: settings[k] for k in keys if k in settings}
    return create_app(None, loader=lambda: load_predictor(run_dir, backend=backend, fallback_domain=fallback), **limits)


def app_from_environment() -> FastAPI:
    """The app of a uvicorn worker process, from the settings :func:`serve` put in ``$POLYREC_SERVE``."""
    raw = os.environ.get(ENV_SETTINGS)
    if not raw:
        raise RuntimeError(f"${ENV_SETTINGS} is not set; start the server with polyrec.serving.server.serve")
    return _app_from_settings(json.loads(raw))


def serve(
    run_dir: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    backend: str = "eager",
    workers: int = 1,
    *,
    fallback_domain: str | None = None,
    max_candidates: int = 1000,
    max_body_bytes: int = 1_000_000,
    timeout_s: float = 1.0,
    allow_reload: bool = True,
    inline_max_candidates: int = 256,
    log_level: str = "info",
) -> None:
    """Serve the run in ``run_dir`` over HTTP with uvicorn until interrupted (SIGINT / SIGTERM).

    The run is checked and loaded first (a damaged run, an unknown backend or fallback domain fails here,
    before the port is opened). SIGHUP reloads it: in place with one worker, by restarting the workers
    with several.

    Args:
        run_dir: a finished ranking or retrieval run directory.
        host, port: where to listen (``127.0.0.1``: this machine only).
        backend: ``eager`` or ``onnx`` (:data:`~polyrec.serving.predictor.BACKENDS`).
        workers: server processes (each loads the run; each keeps its own metrics).
        fallback_domain: the domain unknown domains are scored as (default: they are a 422 error).
        max_candidates, max_body_bytes, timeout_s, allow_reload, inline_max_candidates: as
            :func:`create_app` takes them
            (``allow_reload=False`` removes ``POST /admin/reload``; SIGHUP, which only the machine's own
            users can send, still reloads).
        log_level: uvicorn's log level.

    Raises:
        ArtifactError: the run directory is not a finished run, or a file is damaged.
        NotImplementedError: ``backend='onnx'`` with a retrieval run.
        ValueError: bad arguments.
    """
    import uvicorn

    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"port must be an integer in 0..65535, got {port!r}")
    limits = {
        "max_candidates": max_candidates,
        "max_body_bytes": max_body_bytes,
        "timeout_s": timeout_s,
        "allow_reload": allow_reload,
        "inline_max_candidates": inline_max_candidates,
    }
    predictor = load_predictor(run_dir, backend=backend, fallback_domain=fallback_domain)
    if workers > 1:
        os.environ[ENV_SETTINGS] = json.dumps(_settings(run_dir, backend, fallback_domain, limits))
        del predictor  # each worker loads its own
        uvicorn.run(
            "polyrec.serving.server:app_from_environment",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_level=log_level,
        )
        return
    loader = lambda: load_predictor(run_dir, backend=backend, fallback_domain=fallback_domain)  # noqa: E731
    app = create_app(predictor, loader=loader, **limits)
    _settle_heap()
    previous = None
    if hasattr(signal, "SIGHUP") and threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGHUP, lambda signum, frame: app.state.polyrec.reload_in_background())
    try:
        uvicorn.run(app, host=host, port=port, log_level=log_level)
    finally:
        if previous is not None:
            signal.signal(signal.SIGHUP, previous)
