"""One retrieval run end to end, its run directory, and many runs of a preset (a benchmark).

A run directory of a retrieval model holds (JSON and safetensors only, nothing pickled):

- ``config.json``: the resolved experiment config (``kind: retrieval``, data, model name and options, train);
- ``schema.json``: the :class:`~polyrec.models.retrieval.base.RetrievalSchema` the model was built from;
- ``data.json``: the data's fingerprint and statistics;
- ``model.safetensors``: the trained weights (the best validation epoch);
- ``history.jsonl``: one record per epoch;
- ``result.json``: test metrics (per domain, overall, mean), the summary of training, cost, versions;
- ``manifest.json``: the sha256 of every file above, checked before any of them is read back.

``run_retrieval`` on a folder that holds a finished run of the same config and data reuses it; a run of
another config or other data is an error naming the difference; ``overwrite=True`` starts afresh.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import re
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from ..config import ConfigError, apply_overrides, from_dict, to_dict
from ..data.cache import sha256_file
from ..safeio import ArtifactError, load_tensors, read_json, save_tensors, write_json
from .trainer import RetrievalTrainConfig, RetrievalTrainer, evaluate_retrieval

#: The files of a retrieval run directory, in the order they are written; the manifest comes last.
RUN_FILES = ("config.json", "schema.json", "data.json", "model.safetensors", "history.jsonl", "result.json")
POPULARITY = "popularity"
#: Plain names a retrieval preset reads as the two-tower version of a ranking model of the same name.
PLAIN_NAMES = {
    "shared_bottom": "shared_bottom_tt",
    "cross_stitch": "cross_stitch_tt",
    "mmoe": "mmoe_tt",
    "ple": "ple_tt",
}


def retrieval_model_name(name: str) -> str:
    """The registered retrieval model ``name`` means (``mmoe`` → ``mmoe_tt``), or ``popularity``."""
    from ..models import list_models
    from ..registry import unknown_name

    name = PLAIN_NAMES.get(name, name)
    valid = [*list_models("retrieval"), POPULARITY]
    if name not in valid:
        raise unknown_name("retrieval model", name, valid)
    return name


@dataclasses.dataclass(frozen=True)
class RetrievalExperimentConfig:
    """Everything a retrieval run depends on: its data, model and training settings.

    Args:
        protocol: the preset it came from (a label; ``data`` holds the settings).
        data: the retrieval data config (:class:`polyrec.retrieval.data.RetrievalDataConfig`) as a dict.
        model: the registered retrieval model name, or ``popularity``.
        model_options: the model's config overrides.
        train: the training config.
    """

    protocol: str
    data: dict[str, Any]
    model: str
    model_options: dict[str, Any]
    train: RetrievalTrainConfig

    def to_dict(self) -> dict[str, Any]:
        model = {}
        if self.model != POPULARITY:
            from ..models import model_config

            model = to_dict(model_config(self.model, **self.model_options))
        return {
            "kind": "retrieval",
            "protocol": self.protocol,
            "data": self.data,
            "model": {"name": self.model, **model},
            "train": to_dict(self.train),
        }

    def hash(self) -> str:
        import hashlib

        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def is_retrieval_preset(name: str | None) -> bool:
    from .presets import RETRIEVAL_PRESETS

    return name in RETRIEVAL_PRESETS


_SPEC = re.compile(r"^(?P<name>[A-Za-z0-9_]+)(?:\[(?P<options>[^\]]*)\])?(?:@(?P<strategy>[A-Za-z0-9_]+))?$")


def parse_model_spec(spec: str) -> tuple[str, dict[str, Any], str | None]:
    """``name[option=value,...]@strategy`` → ``(model name, options, strategy or None)``.

    Example:
        >>> parse_model_spec("adi[fusion=sum,num_shared=2]@self_training")
        ('adi', {'fusion': 'sum', 'num_shared': 2}, 'self_training')
    """
    import yaml

    m = _SPEC.match(spec.strip())
    if m is None:
        raise ValueError(
            f"model {spec!r} is not a retrieval model spec; write NAME, NAME@STRATEGY or "
            "NAME[option=value,...]@STRATEGY (e.g. adi[fusion=sum]@self_training)"
        )
    options: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in (m["options"] or "").split(","))):
        key, eq, value = part.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"model {spec!r}: option {part!r} is not KEY=VALUE")
        options[key.strip()] = yaml.safe_load(value.strip())
    return m["name"], options, m["strategy"]


def make_retrieval_config(
    protocol: str, model: str, overrides: list[str] | tuple[str, ...] = (), seed: int | None = None
) -> RetrievalExperimentConfig:
    """The config of ``model`` (a spec, :func:`parse_model_spec`) on retrieval preset ``protocol`` with
    dotted ``overrides`` (``train.lr=1e-3``, ``model.num_shared=3``, ``data.history_len=50``).

    A spec's ``@strategy`` sets ``train.strategy`` and its options the model's; an override that contradicts
    the spec is an error."""
    from .data import RetrievalDataConfig, retrieval_config
    from .presets import retrieval_preset

    preset = retrieval_preset(protocol)
    raw, spec_options, strategy = parse_model_spec(model)
    name = retrieval_model_name(raw)
    tree: dict[str, Any] = {
        "data": to_dict(retrieval_config(preset["data"])),
        "model": dict(spec_options),
        "train": dict(preset["train"]),
    }
    if strategy is not None:
        tree["train"]["strategy"] = strategy
    if seed is not None:
        tree["train"]["seed"] = seed
    tree = apply_overrides(tree, list(overrides))
    unknown = set(tree) - {"data", "model", "train"}
    if unknown:
        raise ConfigError(f"unknown config section(s) {sorted(unknown)}; a retrieval config has data, model, train")
    for key, value in spec_options.items():
        if tree["model"].get(key) != value:
            raise ConfigError(
                f"model.{key}: the model spec {model!r} sets {value!r}, an override sets {tree['model'][key]!r}"
            )
    if strategy is not None and tree["train"].get("strategy") != strategy:
        raise ConfigError(
            f"train.strategy: the model spec {model!r} names {strategy!r}, an override sets {tree['train']['strategy']!r}"
        )
    data_cfg = from_dict(RetrievalDataConfig, tree["data"], path="data")
    train = from_dict(RetrievalTrainConfig, tree["train"], path="train")
    options = {k: v for k, v in tree["model"].items() if k != "name"}
    if name == POPULARITY:  # it has no model: an option in its spec is an error, model.* overrides do not apply
        if spec_options:
            raise ConfigError(f"model.{sorted(spec_options)[0]}: the popularity baseline has no options")
        options = {}
    else:
        from ..models import model_config

        model_config(name, **options)  # checked now, where the user wrote it
    return RetrievalExperimentConfig(protocol, to_dict(data_cfg), name, options, train)


def build_model(cfg: RetrievalExperimentConfig, schema):
    from ..models import create_model

    torch.manual_seed(cfg.train.seed)
    return create_model(cfg.model, schema, **cfg.model_options)


def _versions() -> dict[str, str]:
    import numpy

    from .. import __version__
    from ..experiment import cpu_model

    return {
        "polyrec": __version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "threads": str(torch.get_num_threads()),
    }


def load_data(cfg: RetrievalExperimentConfig):
    from .data import RetrievalDataConfig, build_retrieval_data

    return build_retrieval_data(from_dict(RetrievalDataConfig, cfg.data, path="data"))


def _write_manifest(out: Path) -> None:
    files = {f: sha256_file(out / f) for f in RUN_FILES if (out / f).exists()}
    write_json(out / "manifest.json", {"kind": "retrieval", "files": files})


def read_run(run_dir: str | Path) -> dict[str, Any]:
    """The manifest of a retrieval run directory, every listed file checked against its sha256."""
    from ..safeio import verify_files

    run_dir = Path(run_dir)
    manifest = read_json(run_dir / "manifest.json", "run manifest")
    if not isinstance(manifest, dict) or manifest.get("kind") != "retrieval":
        raise ArtifactError(f"{str(run_dir)!r} is not a retrieval run directory (its manifest.json says otherwise)")
    verify_files(run_dir, manifest["files"], "retrieval run")
    return manifest


def is_retrieval_run(run_dir: str | Path) -> bool:
    path = Path(run_dir) / "manifest.json"
    try:
        return json.loads(path.read_text()).get("kind") == "retrieval"
    except (OSError, ValueError, AttributeError):
        return False


def run_retrieval(
    cfg: RetrievalExperimentConfig, out: str | Path | None = None, overwrite: bool = False, data: Any = None
) -> dict[str, Any]:
    """Train (or reuse) one retrieval run, evaluate it on the test split, and write the run directory."""
    out = Path(out) if out is not None else None
    config = cfg.to_dict()
    if out is not None and out.exists() and any(out.iterdir()):
        if overwrite:
            clear_run(out)
        elif (out / "result.json").exists():
            read_run(out)
            old = read_json(out / "config.json", "run config")
            if old != json.loads(json.dumps(config)):
                diff = sorted(
                    f"{s}.{k}"
                    for s in config
                    if isinstance(config[s], dict)
                    for k in set(config[s]) | set(old.get(s, {}))
                    if config[s].get(k) != old.get(s, {}).get(k)
                )
                raise ValueError(
                    f"{str(out)!r} holds a retrieval run of another config (differs in {', '.join(diff) or 'kind'}); "
                    "choose another --out, or pass --overwrite to replace it"
                )
            return read_json(out / "result.json", "run result")
        else:
            raise ValueError(
                f"{str(out)!r} exists and holds no finished retrieval run; choose another --out, or pass --overwrite"
            )
    t0 = time.perf_counter()
    data = data if data is not None else load_data(cfg)
    load_s = time.perf_counter() - t0
    record: dict[str, Any] = {
        "protocol": cfg.protocol,
        "model": cfg.model,
        "seed": cfg.train.seed,
        "config_hash": cfg.hash(),
        "data_hash": data.fingerprint,
    }
    if cfg.model == POPULARITY:
        t1 = time.perf_counter()
        val = evaluate_retrieval(None, data, "val")
        test = evaluate_retrieval(None, data, "test")
        record.update(
            metrics=test.to_dict(), val_metrics=val.to_dict(), num_parameters=0, eval_s=time.perf_counter() - t1
        )
        model, history = None, []
    else:
        from ..models.retrieval.base import RetrievalSchema

        schema = RetrievalSchema.from_data(data)
        model = build_model(cfg, schema)
        trainer = RetrievalTrainer(model, data, cfg.train)
        summary = trainer.fit()
        t1 = time.perf_counter()
        test = evaluate_retrieval(model, data, "test", cfg.train.eval_batch_size)
        test_eval_s = time.perf_counter() - t1
        val = evaluate_retrieval(model, data, "val", cfg.train.eval_batch_size)
        record.update(
            metrics=test.to_dict(),
            val_metrics=val.to_dict(),
            num_parameters=model.num_parameters(),
            test_eval_s=test_eval_s,
            **summary,
        )
        history = trainer.history
    record["load_s"] = load_s
    record["environment"] = _versions()
    record["config"] = config
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "config.json", config)
        write_json(out / "data.json", {"fingerprint": data.fingerprint, "schema": data.schema(), "stats": data.stats()})
        if model is not None:
            write_json(out / "schema.json", model.schema.to_json())
            save_tensors(out / "model.safetensors", {k: v.contiguous() for k, v in model.state_dict().items()})
        from ..safeio import atomic_write_text

        atomic_write_text(out / "history.jsonl", "".join(json.dumps(h, default=float) + "\n" for h in history))
        write_json(out / "result.json", record)
        _write_manifest(out)
    return record


def clear_run(run_dir: Path) -> None:
    """Remove what polyrec writes into a retrieval run directory (its files, ``manifest.json``, ``index/``),
    and nothing else: ``--overwrite`` on a folder that also holds the user's own files leaves them."""
    for name in (*RUN_FILES, "manifest.json"):
        (run_dir / name).unlink(missing_ok=True)
    if (run_dir / "index").is_dir():
        shutil.rmtree(run_dir / "index")


def load_run(run_dir: str | Path) -> tuple[Any, RetrievalExperimentConfig, dict[str, Any]]:
    """``(model, config, result)`` of a retrieval run directory (the model in eval mode; None for popularity)."""
    from ..models import create_model
    from ..models.retrieval.base import RetrievalSchema

    run_dir = Path(run_dir)
    read_run(run_dir)
    config = read_json(run_dir / "config.json", "run config")
    model_section = dict(config["model"])
    name = model_section.pop("name")
    cfg = RetrievalExperimentConfig(
        config["protocol"],
        config["data"],
        name,
        model_section if name != POPULARITY else {},
        from_dict(RetrievalTrainConfig, config["train"], path="train"),
    )
    result = read_json(run_dir / "result.json", "run result")
    if name == POPULARITY:
        return None, cfg, result
    schema = RetrievalSchema.from_json(read_json(run_dir / "schema.json", "run schema"))
    model = create_model(name, schema, **model_section)
    tensors, _ = load_tensors(run_dir / "model.safetensors", "run weights")
    model.load_state_dict(tensors)
    return model.eval(), cfg, result


def check_data(run_dir: Path, data: Any) -> None:
    saved = read_json(run_dir / "data.json", "run data")
    if saved.get("fingerprint") != data.fingerprint:
        raise ValueError(
            f"the data of {str(run_dir)!r} (fingerprint {saved.get('fingerprint')}) differs from the data built now "
            f"({data.fingerprint}): the source files changed; retrain the run"
        )


def evaluate_run(run_dir: str | Path, split: str = "test") -> dict[str, Any]:
    """Metrics of a retrieval run on ``val`` or ``test`` (the data rebuilt and checked against the run's)."""
    if split not in ("val", "test"):
        raise ValueError(f"split {split!r}: a retrieval run is evaluated on 'val' or 'test'")
    model, cfg, _ = load_run(run_dir)
    data = load_data(cfg)
    check_data(Path(run_dir), data)
    return evaluate_retrieval(model, data, split, cfg.train.eval_batch_size).to_dict()


def serving_user(data: Any, user: str, domain: int) -> Any:
    """The query of user ``user`` (its raw id) in ``domain`` as a live system would form it: the user's
    features and its most recent ``history_len`` positives of the whole data set, most recent first."""
    from ..registry import unknown_name
    from .inputs import UserInputs

    index = {u: i for i, u in enumerate(data.users)}
    if str(user) not in index:
        raise unknown_name("user", str(user), data.users[:20] + (["..."] if len(data.users) > 20 else []))
    u = index[str(user)]
    rows = torch.nonzero(data.user == u).squeeze(1)  # the data is sorted by (user, time)
    recent = data.item.index_select(0, rows).flip(0)[: data.history_len] + 1
    history = torch.zeros(1, data.history_len, dtype=torch.long)
    history[0, : len(recent)] = recent
    return UserInputs(data.user_sparse[u : u + 1], history, torch.tensor([domain])), data.item.index_select(0, rows)


def retrieve(
    run_dir: str | Path,
    domain: str,
    user: str,
    k: int = 100,
    index: str = "exact",
    exclude_seen: bool = True,
    data: Any = None,
) -> list[dict[str, Any]]:
    """The top ``k`` items of ``domain``'s corpus for ``user`` by a trained retrieval run.

    Args:
        run_dir: a retrieval run directory.
        domain: a domain name of the run's data.
        user: the user's raw id (as in the source data, e.g. ``"1"``).
        k: how many items.
        index: ``exact`` or ``hnsw``: a faiss index of the domain's item embeddings, built on first use and
            kept under ``run_dir/index/<kind>`` (checksummed); ``matmul``: exact scores without faiss.
        exclude_seen: leave out the items the user has a positive for.
        data: the run's data, when the caller has it already (checked against the run's fingerprint).

    Returns:
        ``[{"rank", "item", "item_index", "score"}]``, best first.
    """
    from ..registry import unknown_name
    from .trainer import embed_items

    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if index not in ("exact", "hnsw", "matmul"):
        raise ValueError(f"index {index!r} is not one of exact, hnsw, matmul")
    run_dir = Path(run_dir)
    model, cfg, _ = load_run(run_dir)
    if model is None:
        raise ValueError(f"{str(run_dir)!r} is the popularity baseline; retrieve from a trained model's run")
    data = data if data is not None else load_data(cfg)
    check_data(run_dir, data)
    if domain not in data.domains:
        raise unknown_name("domain", domain, list(data.domains))
    d = data.domains.index(domain)
    query, seen = serving_user(data, user, d)
    with torch.no_grad():
        q = model.user_embedding(query)
    corpus = data.corpus[d]
    excluded = set(seen.tolist()) if exclude_seen else set()
    if index == "matmul":
        with torch.no_grad():
            scores = (embed_items(model, data, corpus, d) @ q[0]).clone()
        if excluded:
            scores[torch.isin(corpus, torch.tensor(sorted(excluded)))] = -float("inf")
        top = torch.topk(scores, min(k, len(corpus)))
        pairs = [(int(corpus[i]), float(s)) for s, i in zip(top.values, top.indices) if s > -float("inf")]
    else:
        indexes = domain_indexes(run_dir, model, data, index)
        scores, ids = indexes.search(domain, q.numpy(), k, [excluded])
        pairs = [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if i >= 0]
    return [{"rank": r + 1, "item": data.items[i], "item_index": i, "score": s} for r, (i, s) in enumerate(pairs)]


def domain_indexes(run_dir: Path, model: Any, data: Any, kind: str):
    """The run's per-domain faiss indexes of ``kind``: read from ``run_dir/index/<kind>``, or built and saved."""
    from .index import DomainIndexes
    from .trainer import embed_items

    where = run_dir / "index" / kind
    if (where / "domains.json").exists():
        return DomainIndexes.load(where)
    embeddings = {
        name: (embed_items(model, data, data.corpus[d], d).numpy(), data.corpus[d].numpy())
        for d, name in enumerate(data.domains)
    }
    indexes = DomainIndexes.build(embeddings, kind=kind)
    indexes.save(where)
    return indexes
