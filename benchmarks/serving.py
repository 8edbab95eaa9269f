"""A bounded closed-loop load test of `polyrec serve`: latency and throughput of `POST /v1/rank` on one core.

For each backend (`--backends eager,onnx`) one uvicorn worker serves the run (`polyrec.serving.server.serve`)
in a subprocess pinned to one core (`--server-core`, default the first core this process may use) with one
torch thread, on a free port of 127.0.0.1. The load generator runs in this process, pinned to the other
cores: `--concurrency` client threads, each with one keep-alive `http.client` connection, each sending its
next request as soon as the previous answer has arrived (a closed loop), `--warmup` requests first (not
counted), then `--requests` measured ones, all within `--max-seconds`. Latency is client-side, per request:
from sending the request to having read the whole answer. Every answer must be a 200 with one score per
candidate; anything else is a failure, counted by kind and reported.

Each request is one domain, one user and `--candidates` candidates, built from real rows of the run's source
data: the user's columns (those constant per user in the data: for MovieLens the id, gender, age, occupation,
zip code) from one row, the candidates' columns (the film, its genre) from `--candidates` other rows of the
same domain. `--distinct` such requests are built (seeded) and sent in turn.

Without `--run`, a STAR run on `ml1m-age3` trained for one epoch is made (once) under the polyrec cache
(`$POLYREC_CACHE/benchmarks/serving-ml1m-age3-star`) and served. A backend the server refuses (`onnx` while it
is not implemented) is reported as not available, with the server's message.

Target (per backend): p99 <= 10 ms and >= 50,000 candidates/s on one core, without failures.

    python benchmarks/serving.py [--run DIR] [--backends eager,onnx] [--requests 2000] [--concurrency 4]
        [--candidates 100] [--warmup 200] [--max-seconds 120] [--out benchmarks/results]
    # writes serving.{json,md} into --out
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import itertools
import json
import os
import platform
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from polyrec.experiment import cpu_model

HERE = Path(__file__).resolve().parent
OUT = HERE / "results"
PRESET, MODEL = "ml1m-age3", "star"
TARGET = {"p99_ms": 10.0, "candidates_per_s": 50_000}
UNAVAILABLE = "POLYREC_BENCH_UNAVAILABLE:"
UNAVAILABLE_RC = 3

# The server process: pinned to its core before torch is imported, one torch thread, the backend refused
# (NotImplementedError) reported on one marked line and exit code 3.
SERVER_CODE = """\
import os, sys
os.sched_setaffinity(0, {core})
import torch
torch.set_num_threads(1)
torch.set_num_interop_threads(1)
from polyrec.serving.server import serve
try:
    serve({run!r}, host="127.0.0.1", port={port}, backend={backend!r}, max_candidates={max_candidates},
          max_body_bytes={max_body_bytes}, log_level={log_level!r})
except NotImplementedError as exc:
    print({marker!r}, " ".join(str(exc).split()), file=sys.stderr, flush=True)
    sys.exit({rc})
"""


# ----------------------------------------------------------------------------------------------- the run


def default_run() -> Path:
    """The STAR run on ml1m-age3 (one epoch) this script serves without `--run`, trained once into the cache."""
    from polyrec.data.cache import cache_dir
    from polyrec.experiment import make_config, run_experiment
    from polyrec.rundir import read_manifest

    run = cache_dir() / "benchmarks" / f"serving-{PRESET}-{MODEL}"
    try:
        read_manifest(run)
        return run
    except Exception:  # not there yet, or unfinished / damaged: train it (again)
        pass
    print(f"training {MODEL} on {PRESET} for one epoch into {run} ...", file=sys.stderr)
    cfg = make_config(PRESET, MODEL, overrides=["train.max_epochs=1"])
    run_experiment(cfg, run, progress=False, overwrite=True)
    return run


# ----------------------------------------------------------------------------------------------- requests


def _plain(value: Any) -> Any:
    """A frame cell as a JSON value (numpy scalars to Python ones)."""
    return value.item() if isinstance(value, np.generic) else value


def build_requests(run: Path, candidates: int, distinct: int, seed: int = 0) -> tuple[list[bytes], dict[str, Any]]:
    """`distinct` encoded `/v1/rank` bodies of real rows of the run's source data, and how they were made.

    The first body is scored in this process by the run's predictor, so that a request the server would
    refuse is found here, with the predictor's message.
    """
    from polyrec.data.dataset import derive_domain, load_rows
    from polyrec.serving.predictor import Predictor

    predictor = Predictor.from_run(run)
    data = predictor.data
    columns = list(predictor.input_columns)
    frame = load_rows(data)
    frame = frame[frame[columns].notna().all(axis=1)].reset_index(drop=True)
    codes, names = derive_domain(frame, data.domain)
    if list(names) != list(predictor.domains):
        raise RuntimeError(f"the data's domains {list(names)} are not the run's {list(predictor.domains)}")
    user_col = None
    if data.user_feature is not None:
        user_col = next(f.source_column for f in data.features if f.name == data.user_feature)
    if user_col is None:
        user_cols: list[str] = []
    else:
        per_user = frame.groupby(user_col, sort=False)[[c for c in columns if c != user_col]].nunique(dropna=False)
        user_cols = [user_col, *[c for c in per_user.columns if int(per_user[c].max()) <= 1]]
    cand_cols = [c for c in columns if c not in user_cols]
    rng = np.random.default_rng(seed)
    by_domain = [np.flatnonzero(codes == d) for d in range(len(names))]
    values = {c: frame[c].to_numpy() for c in columns}
    bodies = []
    for _ in range(distinct):
        r = int(rng.integers(len(frame)))
        pool = by_domain[codes[r]]
        picks = rng.choice(pool, size=candidates, replace=len(pool) < candidates)
        body = {
            "domain": names[codes[r]],
            "user": {c: _plain(values[c][r]) for c in user_cols},
            "candidates": [{c: _plain(values[c][i]) for c in cand_cols} for i in picks],
        }
        if not bodies:
            scored = predictor.rank(body["domain"], body["user"], {}, body["candidates"])
            assert len(scored) == candidates
        bodies.append(json.dumps(body, separators=(",", ":")).encode())
    info = {
        "source": data.source.kind + (f" {data.source.name}" if data.source.kind in ("movielens", "atomic") else ""),
        "source_rows": len(frame),
        "user_columns": user_cols,
        "candidate_columns": cand_cols,
        "model": predictor.model_name,
        "domains": list(names),
        "distinct_requests": distinct,
        "inline_max_candidates": _serve_default("inline_max_candidates"),
        "mean_body_bytes": round(sum(map(len, bodies)) / len(bodies)),
        "seed": seed,
    }
    return bodies, info


def _serve_default(name: str) -> Any:
    import inspect

    from polyrec.serving.server import serve

    return inspect.signature(serve).parameters[name].default


# ----------------------------------------------------------------------------------------------- the server


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


class Server:
    """`serve(run, backend=...)` in a subprocess pinned to `core`; `start()` waits for `/readyz`."""

    def __init__(
        self, run: Path, backend: str, core: int, log: Path, *, candidates: int, body_bytes: int, access_log: bool
    ) -> None:
        self.run, self.backend, self.core, self.log_path = run, backend, core, log
        self.candidates, self.body_bytes, self.access_log = candidates, body_bytes, access_log
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self._log = None

    def start(self, timeout: float) -> dict[str, Any]:
        """Start the server; returns `/readyz`'s answer. Raises `Unavailable` when it refuses the backend."""
        import polyrec

        self.port = free_port()
        code = SERVER_CODE.format(
            core={self.core},
            run=str(self.run),
            port=self.port,
            backend=self.backend,
            max_candidates=max(1000, self.candidates),
            max_body_bytes=max(1_000_000, 2 * self.body_bytes),
            log_level="info" if self.access_log else "warning",
            marker=UNAVAILABLE,
            rc=UNAVAILABLE_RC,
        )
        src = str(Path(polyrec.__file__).resolve().parents[1])
        path = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH", "")) if p)
        env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        self._log = open(self.log_path, "w+")  # noqa: SIM115 (closed by stop)
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdout=self._log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rc = self.proc.poll()
            if rc is not None:
                text = self.log_text()
                marked = [line for line in text.splitlines() if line.startswith(UNAVAILABLE)]
                if rc == UNAVAILABLE_RC and marked:
                    raise Unavailable(marked[-1][len(UNAVAILABLE) :].strip())
                raise RuntimeError(f"the server exited with code {rc} before it was ready:\n{_tail(text)}")
            try:
                status, body = _get(self.port, "/readyz", timeout=2.0)
                if status == 200:
                    return json.loads(body)
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"the server was not ready after {timeout:g} s:\n{_tail(self.log_text())}")

    def cpu_seconds(self) -> float | None:
        """User + system CPU time the server process has used (from /proc), or None."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError, AttributeError):
            return None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout` s; returns the exit code."""
        rc = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            rc = self.proc.returncode
        if self._log is not None:
            self._log.close()
            self._log = None
        return rc


class Unavailable(Exception):
    """The server refused the backend."""


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


# ----------------------------------------------------------------------------------------------- the load


class Client:
    """One keep-alive connection of the closed loop."""

    def __init__(self, port: int, timeout: float) -> None:
        self.port, self.timeout = port, timeout
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)

    def rank(self, body: bytes) -> tuple[int | None, bytes, str | None]:
        """(status, answer, connection error) of one request; the connection is reopened after an error."""
        try:
            self.conn.request("POST", "/v1/rank", body, {"Content-Type": "application/json"})
            resp = self.conn.getresponse()
            return resp.status, resp.read(), None
        except (OSError, http.client.HTTPException) as exc:
            self.conn.close()
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            return None, b"", f"{type(exc).__name__}: {exc}"

    def close(self) -> None:
        self.conn.close()


def _failure(status: int | None, answer: bytes, error: str | None, candidates: int) -> tuple[str, str] | None:
    """(kind, message) when the answer is not a 200 with `candidates` scores, else None."""
    if error is not None:
        return "connection", error
    if status != 200:
        try:
            err = json.loads(answer)["error"]
            return f"http_{status}", f"{status} {err.get('kind')}: {err.get('message')}"
        except (ValueError, KeyError, TypeError):
            return f"http_{status}", f"{status}: {answer[:200]!r}"
    try:
        scores = json.loads(answer)["scores"]
    except (ValueError, KeyError, TypeError):
        return "bad_answer", f"200 without scores: {answer[:200]!r}"
    if len(scores) != candidates:
        return "bad_answer", f"200 with {len(scores)} scores for {candidates} candidates"
    return None


def closed_loop(
    clients: list[Client], bodies: list[bytes], n: int, deadline: float, candidates: int, offset: int = 0
) -> dict[str, Any]:
    """`n` requests over `clients` (one thread each, each sending its next when its answer is in), stopped
    at `deadline` (time.monotonic). Returns the latencies (s) of the good answers and the failures."""
    counter = itertools.count()
    lock = threading.Lock()
    latencies: list[list[float]] = [[] for _ in clients]
    kinds: Counter[str] = Counter()
    first: dict[str, str] = {}
    sent = [0]

    def work(k: int) -> None:
        client, mine = clients[k], latencies[k]
        while True:
            i = next(counter)
            if i >= n or time.monotonic() >= deadline:
                return
            body = bodies[(offset + i) % len(bodies)]
            t0 = time.perf_counter()
            status, answer, error = client.rank(body)
            elapsed = time.perf_counter() - t0
            bad = _failure(status, answer, error, candidates)
            with lock:
                sent[0] += 1
                if bad is None:
                    mine.append(elapsed)
                else:
                    kinds[bad[0]] += 1
                    first.setdefault(bad[0], bad[1])

    threads = [threading.Thread(target=work, args=(k,), daemon=True) for k in range(len(clients))]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {
        "sent": sent[0],
        "latencies": [x for part in latencies for x in part],
        "failures": sum(kinds.values()),
        "failure_kinds": dict(kinds),
        "failure_examples": first,
        "wall_s": wall,
    }


def measure(server: Server, bodies: list[bytes], args: argparse.Namespace) -> dict[str, Any]:
    """Warm-up, then the measured closed loop, against the started `server`."""
    deadline = time.monotonic() + args.max_seconds
    clients = [Client(server.port, timeout=max(5.0, args.max_seconds)) for _ in range(args.concurrency)]
    try:
        warm = closed_loop(clients, bodies, args.warmup, deadline, args.candidates)
        cpu0 = server.cpu_seconds()
        run = closed_loop(clients, bodies, args.requests, deadline, args.candidates, offset=args.warmup)
        cpu1 = server.cpu_seconds()
    finally:
        for c in clients:
            c.close()
    lat = np.asarray(run["latencies"]) * 1000.0
    ok = len(lat)
    wall = run["wall_s"]

    def pct(q: float) -> float | None:
        return round(float(np.percentile(lat, q)), 3) if ok else None

    result = {
        "status": "ok",
        "requested": args.requests,
        "sent": run["sent"],
        "succeeded": ok,
        "failures": run["failures"],
        "failure_kinds": run["failure_kinds"],
        "failure_examples": run["failure_examples"],
        "warmup_sent": warm["sent"],
        "warmup_failures": warm["failures"],
        "time_bound_hit": run["sent"] < args.requests or warm["sent"] < args.warmup,
        "wall_s": round(wall, 3),
        "latency_ms": {
            "p50": pct(50),
            "p90": pct(90),
            "p99": pct(99),
            "max": round(float(lat.max()), 3) if ok else None,
            "mean": round(float(lat.mean()), 3) if ok else None,
        },
        "requests_per_s": round(ok / wall, 1) if wall > 0 else None,
        "candidates_per_s": round(ok * args.candidates / wall) if wall > 0 else None,
        "server_cpu_share": round((cpu1 - cpu0) / wall, 3) if cpu0 is not None and cpu1 is not None and wall else None,
    }
    p99, cps = result["latency_ms"]["p99"], result["candidates_per_s"]
    result["target_met"] = bool(
        ok
        and not result["failures"]
        and not result["time_bound_hit"]
        and p99 <= TARGET["p99_ms"]
        and cps >= TARGET["candidates_per_s"]
    )
    return result


# ----------------------------------------------------------------------------------------------- the machine


def versions() -> dict[str, str]:
    from importlib import metadata

    import polyrec

    out = {"polyrec": polyrec.__version__, "python": platform.python_version()}
    for name in ("torch", "numpy", "fastapi", "uvicorn", "starlette", "pydantic", "onnxruntime"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "-C", str(HERE), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


def pinning(server_core: int | None) -> tuple[int, list[int], bool]:
    """(server core, client cores, whether they share a core) among the cores this process may use."""
    cores = sorted(os.sched_getaffinity(0))
    core = cores[0] if server_core is None else server_core
    if core not in cores:
        raise SystemExit(f"--server-core {core} is not one of the cores this process may use: {cores}")
    rest = [c for c in cores if c != core]
    return core, rest or [core], not rest


# ----------------------------------------------------------------------------------------------- output


def _ms(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}"


def markdown(res: dict[str, Any]) -> str:
    load, pin, run = res["load"], res["pinning"], res["run"]
    t = res["target"]
    lines = [
        f"# Serving: `POST /v1/rank` on one core ({run['model']}, {load['candidates']} candidates per request)",
        "",
        f"Command: `{res['command']}`  ",
        f"Machine: {res['machine']['cpu_model']}, {res['machine']['logical_cpus']} logical CPUs; server pinned to "
        f"core {pin['server_core']} (1 uvicorn worker, 1 torch thread), load generator on core(s) "
        f"{', '.join(map(str, pin['client_cores']))}"
        + (" (the same core: only one available)" if pin["shared"] else "")
        + "  ",
        f"Versions: {', '.join(f'{k} {v}' for k, v in res['versions'].items())}"
        + (f"; commit {res['commit']}" if res.get("commit") else "")
        + "  ",
        f"Run: `{run['dir']}` ({run['model']}, domains {', '.join(run['domains'])}"
        + (f"; trained by this script: {run['trained_as']}" if run.get("trained_as") else "")
        + ")",
        "",
        f"Load: closed loop, {load['concurrency']} keep-alive clients, {load['warmup']} warm-up requests (not "
        f"counted), then {load['requests']:,} measured, bounded by {load['max_seconds']:g} s. Each request: one "
        f"domain, one user ({', '.join(load['user_columns'])}) and {load['candidates']} candidates "
        f"({', '.join(load['candidate_columns'])}) from real rows of {load['source']}; {load['distinct_requests']} "
        f"distinct requests sent in turn (mean body {load['mean_body_bytes']:,} bytes). Latency: client-side, "
        "per request, from sending it to having read the whole answer.",
        "",
        "Server: `serve()`'s defaults; a request of at most "
        f"{load.get('inline_max_candidates', '?')} candidates is scored on the event loop, without a worker "
        "thread (`inline_max_candidates`).",
        "",
        f"Target: p99 <= {t['p99_ms']:g} ms and >= {t['candidates_per_s']:,} candidates/s on one core, no failures.",
        "",
        "| backend | status | requests ok / failed | p50 ms | p90 ms | p99 ms | max ms | requests/s | candidates/s "
        "| server CPU | target met |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    notes = []
    for name, b in res["backends"].items():
        if b["status"] != "ok":
            lines.append(f"| {name} | {b['status']} | — | — | — | — | — | — | — | — | — |")
            notes.append(f"- {name}: {b['status']}: {b['message']}")
            continue
        lat = b["latency_ms"]
        cpu = "—" if b["server_cpu_share"] is None else f"{100 * b['server_cpu_share']:.0f}%"
        met = "**yes**" if b["target_met"] else "no"
        lines.append(
            f"| {name} | ok | {b['succeeded']:,} / {b['failures']:,} | {_ms(lat['p50'])} | {_ms(lat['p90'])} | "
            f"{_ms(lat['p99'])} | {_ms(lat['max'])} | {b['requests_per_s']:,.0f} | {b['candidates_per_s']:,} | "
            f"{cpu} | {met} |"
        )
        if b["failures"]:
            shown = "; ".join(f"{k} x{n} ({b['failure_examples'][k]})" for k, n in b["failure_kinds"].items())
            notes.append(f"- {name}: failures: {shown}")
        if b["warmup_failures"]:
            notes.append(f"- {name}: {b['warmup_failures']} failure(s) during the warm-up")
        if b["time_bound_hit"]:
            notes.append(f"- {name}: the time bound ended the run after {b['sent']:,} of {b['requested']:,} requests")
    lines += ["", "Server CPU: the server process's CPU time over the measured wall time (100% = its core busy)."]
    if notes:
        lines += ["", *notes]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, help=f"a ranking run directory (default: {MODEL} on {PRESET}, one epoch)")
    ap.add_argument("--backends", default="eager,onnx", help="comma-separated backends to serve with")
    ap.add_argument("--requests", type=int, default=2000, help="measured requests per backend")
    ap.add_argument("--concurrency", type=int, default=4, help="clients in the closed loop")
    ap.add_argument("--candidates", type=int, default=100, help="candidates per request")
    ap.add_argument("--warmup", type=int, default=200, help="requests sent first, not counted")
    ap.add_argument("--max-seconds", type=float, default=120.0, help="time bound of warm-up + measurement")
    ap.add_argument("--distinct", type=int, default=256, help="distinct requests built (sent in turn)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the rows the requests are built from")
    ap.add_argument("--server-core", type=int, help="the core the server is pinned to (default: the first)")
    ap.add_argument("--start-timeout", type=float, default=180.0, help="seconds to wait for /readyz")
    ap.add_argument("--access-log", action="store_true", help="keep uvicorn's access log on (default: off)")
    ap.add_argument("--out", type=Path, default=OUT, help="folder for serving.json and serving.md")
    args = ap.parse_args(argv)
    for name in ("requests", "concurrency", "candidates", "distinct"):
        if getattr(args, name) < 1:
            ap.error(f"--{name} must be >= 1")
    if args.warmup < 0 or args.max_seconds <= 0:
        ap.error("--warmup must be >= 0 and --max-seconds > 0")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the load test and write `serving.json` and `serving.md` into `--out`; returns the results."""
    args = parse_args(argv)
    command = shlex.join(["python", "benchmarks/serving.py", *(sys.argv[1:] if argv is None else argv)])
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    trained_as = None
    if args.run is None:
        run = default_run()
        trained_as = f"{MODEL} on {PRESET}, 1 epoch (train.max_epochs=1)"
    else:
        run = args.run.resolve()
    bodies, info = build_requests(run, args.candidates, args.distinct, args.seed)
    core, client_cores, shared = pinning(args.server_core)
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "command": command,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {
            "cpu_model": cpu_model(),
            "logical_cpus": os.cpu_count(),
            "usable_cpus": sorted(os.sched_getaffinity(0)),
            "platform": platform.platform(),
        },
        "pinning": {
            "server_core": core,
            "client_cores": client_cores,
            "shared": shared,
            "server_workers": 1,
            "server_torch_threads": 1,
            "access_log": args.access_log,
        },
        "versions": versions(),
        "commit": git_commit(),
        "run": {"dir": str(run), "model": info["model"], "domains": info["domains"], "trained_as": trained_as},
        "load": {
            "requests": args.requests,
            "warmup": args.warmup,
            "concurrency": args.concurrency,
            "candidates": args.candidates,
            "max_seconds": args.max_seconds,
            **{k: v for k, v in info.items() if k not in ("model", "domains")},
        },
        "target": dict(TARGET),
        "backends": {},
    }
    original = os.sched_getaffinity(0)
    logs = tempfile.TemporaryDirectory(prefix="polyrec-serving-")
    os.sched_setaffinity(0, client_cores)  # this thread, and the client threads started from it
    try:
        for backend in backends:
            log = Path(logs.name) / f"server-{backend}.log"
            size = max(map(len, bodies))
            server = Server(
                run, backend, core, log, candidates=args.candidates, body_bytes=size, access_log=args.access_log
            )
            try:
                ready = server.start(args.start_timeout)
                if ready.get("backend") != backend:
                    raise RuntimeError(f"asked for backend {backend!r}, the server runs {ready.get('backend')!r}")
                entry = measure(server, bodies, args)
            except Unavailable as exc:
                entry = {"status": "not available", "message": str(exc)}
            except RuntimeError as exc:
                entry = {"status": "error", "message": str(exc)}
            finally:
                rc = server.stop()
            if entry["status"] == "ok":
                entry["server_exit_code"] = rc
            else:
                entry["server_log_tail"] = _tail(server.log_text())
            results["backends"][backend] = entry
            print(f"{backend}: {json.dumps(_summary(entry))}", file=sys.stderr)
    finally:
        os.sched_setaffinity(0, original)
        logs.cleanup()
    (args.out / "serving.json").write_text(json.dumps(results, indent=1) + "\n")
    text = markdown(results)
    (args.out / "serving.md").write_text(text)
    print(text)
    return results


def _summary(entry: dict[str, Any]) -> dict[str, Any]:
    if entry["status"] != "ok":
        return {"status": entry["status"], "message": entry["message"]}
    keys = ("succeeded", "failures", "latency_ms", "requests_per_s", "candidates_per_s", "target_met")
    return {k: entry[k] for k in keys}


if __name__ == "__main__":
    res = main()
    bad = [b for b, e in res["backends"].items() if e["status"] == "error" or e.get("failures")]
    sys.exit(1 if bad else 0)
