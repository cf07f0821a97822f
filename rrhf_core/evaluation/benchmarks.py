"""Benchmarks in evaluation, run through lm-evaluation-harness (``lm-eval``): a ruler the project does not own.

``evaluate.benchmarks`` names lm-eval tasks (``ifeval``, or any task lm-eval knows). Each runs on the candidate and
on the baseline with the same settings: lm-eval's own prompt building, generation (greedy, as the task says) and
metrics, over the model the evaluation stage already loaded (lm-eval's ``HFLM`` wrapped around it). For each metric
the report has both models' values (lm-eval's aggregates) and the candidate-minus-baseline difference with a paired
bootstrap CI over the task's items (:func:`~rrhf_core.evaluation.stats.paired_ratio_ci`: a mean metric, or one pooled
over an item's parts such as IFEval's instruction-level accuracy); every item's answers and values are kept in
``benchmarks/<task>_items.parquet`` (the pipeline logs it to MLflow as a table). The gate can use a task as a
regression guard (``gate.no_regression``).

Where the items come from (``data``):
- unset: the task's own dataset from the Hugging Face hub (online, or already in the datasets cache);
- a local file in the task's format (JSONL, JSON, Parquet or CSV; for ``ifeval``: ``key``, ``prompt``,
  ``instruction_id_list``, ``kwargs`` per line, as google/IFEval), checked before any model runs;
- ``held-out`` (``ifeval`` only): the project writes the file from the evaluated prompts whose constraints IFEval
  checks (:func:`rrhf_core.instructions.ifeval.write_ifeval_file`).

lm-eval is imported only here and in :mod:`rrhf_core.instructions.ifeval`; its NLTK data must be installed
(:mod:`rrhf_core.evaluation.nltk_data`), never downloaded at run time.
"""

from __future__ import annotations

import difflib
import json
import logging
import math
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, field_validator

from rrhf_core.errors import ConfigError

HELD_OUT = "held-out"
_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


class Benchmark(BaseModel):
    """One lm-eval task run on both models (a bare task name in YAML means ``{task: name}``)."""

    model_config = ConfigDict(extra="forbid")
    task: str = Field(..., min_length=1, description="An lm-eval task name (e.g. ifeval).")
    data: str | None = Field(
        None,
        description="A local file in the task's format (JSONL/JSON/Parquet/CSV), 'held-out' (ifeval: written from "
        "the evaluated prompts' constraints), or unset: the task's hub dataset (online or cached).",
    )
    limit: int | None = Field(None, ge=1, description="Only the first N items.")
    max_gen_toks: int | None = Field(
        None, ge=1, description="Generation limit per answer (unset: the task's own; ifeval: 1280)."
    )
    batch_size: int = Field(8, ge=1, description="Answers per generate call.")

    @field_validator("task")
    @classmethod
    def _plain(cls, v: str) -> str:
        return v.strip()


def parse_benchmarks(v: Any) -> Any:
    """``[ifeval, {task: ..., data: ...}]`` -> the list with bare names as ``{task: name}``."""
    if v is None:
        return []
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, (list, tuple)):
        return v  # pydantic reports the wrong type
    return [{"task": b} if isinstance(b, str) else b for b in v]


@dataclass
class MetricResult:
    name: str
    candidate: float
    baseline: float
    difference: float
    difference_ci: tuple[float, float] | None  # None: lm-eval's aggregate is not a mean or ratio over items
    higher_is_better: bool = True


@dataclass
class BenchmarkResult:
    task: str
    items: int
    data: str  # the local file, or "hub"
    max_gen_toks: int | None
    primary: str  # the task's first metric: what gate.no_regression guards unless told otherwise
    metrics: list[MetricResult] = field(default_factory=list)
    items_file: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def metric(self, name: str | None = None) -> MetricResult | None:
        name = name or self.primary
        return next((m for m in self.metrics if m.name == name), None)


@cache
def task_manager() -> Any:
    """lm-eval's task index (built once: it reads every task YAML lm-eval ships, about 10 s)."""
    # lm-eval warns on every run that it was handed a loaded model and that max_gen_toks overrides the task's
    # (both intended here); its errors still show
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    try:
        from lm_eval.tasks import TaskManager
    except ImportError as e:
        raise ConfigError(
            f"benchmarks need lm-eval ({e}): pip install the project again (`make setup`)"
        ) from None
    return TaskManager()


def task_entry(name: str) -> Any:
    """lm-eval's index entry for ``name``; an unknown name is a :class:`ConfigError` listing the closest ones."""
    tm = task_manager()
    entry = tm.task_index.get(name)
    if entry is None:
        close = difflib.get_close_matches(name, tm.all_tasks, n=10, cutoff=0.6)
        hint = f"closest: {', '.join(close)}" if close else "no name is close"
        raise ConfigError(
            f"evaluate.benchmarks: lm-eval has no task {name!r} ({hint}); it knows {len(tm.all_tasks)} tasks, "
            "groups and tags: `python -m lm_eval ls tasks` lists them"
        )
    return entry


IFEVAL_FIELDS = {"key": int, "prompt": str, "instruction_id_list": list, "kwargs": list}


def check_task_file(task: str, path: Path) -> int:
    """The number of items in ``path``, after checking it is in the task's format: a :class:`ConfigError` names
    the first bad line and field. JSONL is checked line by line (every line an object with the first line's fields;
    for ifeval, IFEval's four fields with their types and known instruction ids); other formats are left to lm-eval."""
    if not path.is_file():
        raise ConfigError(f"evaluate.benchmarks: {task} data file {path} does not exist")
    if path.suffix not in _FORMATS:
        raise ConfigError(
            f"evaluate.benchmarks: {task} data file {path} is not one of {', '.join(_FORMATS)} (by its suffix)"
        )
    if path.suffix != ".jsonl":
        return -1
    known: set[str] | None = None
    if task == "ifeval":
        from rrhf_core.instructions.ifeval import lm_eval_ifeval

        lm_eval_ifeval()  # punkt_tab checked before lm-eval's IFEval modules are imported
        from lm_eval.tasks.ifeval import instructions_registry

        known = set(instructions_registry.INSTRUCTION_DICT)
    first: set[str] | None = None
    n = 0
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                rec = json.loads(line)
            except ValueError as e:
                raise ConfigError(f"{where}: not JSON ({e})") from None
            if not isinstance(rec, dict):
                raise ConfigError(f"{where}: a {type(rec).__name__}, not a JSON object")
            if known is not None:
                _check_ifeval_record(rec, where, known)
            elif first is None:
                first = set(rec)
            elif set(rec) != first:
                missing, extra = sorted(first - set(rec)), sorted(set(rec) - first)
                raise ConfigError(
                    f"{where}: fields differ from line 1's"
                    + (f"; missing {missing}" if missing else "")
                    + (f"; not on line 1: {extra}" if extra else "")
                )
            n += 1
    if not n:
        raise ConfigError(f"evaluate.benchmarks: {task} data file {path} has no items")
    return n


def _check_ifeval_record(rec: dict[str, Any], where: str, known: set[str]) -> None:
    for name, typ in IFEVAL_FIELDS.items():
        if name not in rec:
            raise ConfigError(
                f"{where}: field {name!r} is missing (IFEval's fields: {', '.join(IFEVAL_FIELDS)})"
            )
        if not isinstance(rec[name], typ) or (typ is int and isinstance(rec[name], bool)):
            raise ConfigError(
                f"{where}: field {name!r} is a {type(rec[name]).__name__}, IFEval's is a {typ.__name__}"
            )
    ids, kwargs = rec["instruction_id_list"], rec["kwargs"]
    if not ids:
        raise ConfigError(f"{where}: field 'instruction_id_list' is empty")
    if len(ids) != len(kwargs):
        raise ConfigError(
            f"{where}: field 'kwargs' has {len(kwargs)} entries for {len(ids)} instructions (one dict each)"
        )
    for i, (iid, kw) in enumerate(zip(ids, kwargs, strict=True)):
        if iid not in known:
            close = difflib.get_close_matches(str(iid), sorted(known), n=3)
            raise ConfigError(
                f"{where}: field 'instruction_id_list'[{i}] {iid!r} is not an IFEval instruction"
                + (f" (closest: {', '.join(close)})" if close else "")
            )
        if not isinstance(kw, dict):
            raise ConfigError(f"{where}: field 'kwargs'[{i}] is a {type(kw).__name__}, not an object")


def _task_spec(bench: Benchmark, entry: Any, data: Path | None, folder: Path) -> str:
    """What lm-eval is asked to load: the task's name, or (a local file) a YAML that includes the task's own and
    points its dataset at the file."""
    if data is None:
        return bench.task
    if entry.yaml_path is None:
        raise ConfigError(
            f"evaluate.benchmarks: {bench.task} is a Python task in lm-eval; a local data file works only for tasks "
            "defined in YAML"
        )
    cfg = entry.cfg or {}
    split = cfg.get("test_split") or cfg.get("validation_split")
    if not split:
        raise ConfigError(f"evaluate.benchmarks: {bench.task} has no test or validation split to replace")
    spec = {
        "include": str(entry.yaml_path),
        "task": bench.task,
        "dataset_path": _FORMATS[data.suffix],
        "dataset_name": None,
        "dataset_kwargs": {"data_files": {split: str(data.resolve())}},
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{bench.task}.yaml"
    path.write_text(json.dumps(spec, indent=1), encoding="utf-8")  # JSON is YAML
    return str(path)


@dataclass
class PreparedBenchmark:
    """A benchmark checked and ready to run: the task spec lm-eval loads, and where its items come from."""

    bench: Benchmark
    spec: str
    data: str
    items: int  # -1: not counted (hub, or a non-JSONL file)


def check_benchmarks(benches: list[Benchmark]) -> None:
    """What can be checked before a round starts: every task is known to lm-eval, ``held-out`` is asked only of
    ifeval, every local file is in its task's format, and IFEval's NLTK data is installed."""
    for b in benches:
        task_entry(b.task)
        _check_held_out(b)
        if b.data not in (None, HELD_OUT):
            check_task_file(b.task, Path(b.data).expanduser())
        elif b.task == "ifeval":
            from rrhf_core.evaluation import nltk_data

            nltk_data.require()


def _check_held_out(b: Benchmark) -> None:
    if b.data == HELD_OUT and b.task != "ifeval":
        raise ConfigError(
            f"evaluate.benchmarks: data: {HELD_OUT} is for ifeval (the held-out prompts' constraints written in "
            f"IFEval's format); give {b.task} a file in its format, or no data for the hub's"
        )


def prepare(benches: list[Benchmark], prompt_texts: list[str], folder: Path) -> list[PreparedBenchmark]:
    """Check every benchmark (name, data file, format) before any model runs; write the held-out IFEval file."""
    out = []
    for b in benches:
        entry = task_entry(b.task)
        _check_held_out(b)
        data: Path | None = None
        if b.data == HELD_OUT:
            from rrhf_core.instructions.ifeval import write_ifeval_file

            data = folder / "ifeval_held_out.jsonl"
            write_ifeval_file(prompt_texts, data)
        elif b.data is not None:
            data = Path(b.data).expanduser()
        items = check_task_file(b.task, data) if data is not None else -1
        out.append(
            PreparedBenchmark(b, _task_spec(b, entry, data, folder), str(data) if data else "hub", items)
        )
    return out


def run(
    prepared: PreparedBenchmark, model: Any, tokenizer: Any, chat: bool, seed: int
) -> tuple[dict[str, float], list[dict[str, Any]], dict[str, bool]]:
    """One model on one benchmark: lm-eval's aggregate per metric, its per-item samples (sorted by item) and whether
    each metric is better higher."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    if prepared.bench.task == "ifeval":
        from rrhf_core.instructions.ifeval import lm_eval_ifeval

        lm_eval_ifeval()  # punkt_tab checked, langdetect seeded
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=prepared.bench.batch_size)
    gen = {"max_gen_toks": prepared.bench.max_gen_toks} if prepared.bench.max_gen_toks else None
    try:
        out = simple_evaluate(
            lm,
            tasks=[prepared.spec],
            task_manager=task_manager(),
            limit=prepared.bench.limit,
            gen_kwargs=gen,
            apply_chat_template=chat,
            bootstrap_iters=0,
            log_samples=True,
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            fewshot_random_seed=seed,
        )
    except ConfigError:
        raise
    except Exception as e:  # lm-eval's dataset loading: offline without a local file, a broken file, ...
        if prepared.data == "hub":
            raise ConfigError(
                f"evaluate.benchmarks: lm-eval could not load {prepared.bench.task}'s dataset from the hub "
                f"({type(e).__name__}: {e}); either give the benchmark a local file in the task's format (data: "
                "PATH; for ifeval, data: held-out writes one from the held-out prompts) or run online (unset "
                "HF_HUB_OFFLINE / HF_DATASETS_OFFLINE) so lm-eval can download it"
            ) from None
        raise ConfigError(
            f"evaluate.benchmarks: lm-eval failed on {prepared.bench.task} with {prepared.data}: "
            f"{type(e).__name__}: {e}"
        ) from None
    task = prepared.bench.task
    results = out["results"][task]
    aggregates = {
        k.split(",")[0]: float(v)
        for k, v in results.items()
        if "," in k and not k.split(",")[0].endswith("_stderr") and isinstance(v, (int, float))
    }
    higher = {k: bool(v) for k, v in (out.get("higher_is_better", {}).get(task) or {}).items()}
    samples = sorted(out["samples"][task], key=lambda s: s["doc_id"])
    return aggregates, samples, higher


def _num_den(value: Any) -> tuple[float, float] | None:
    """An item's value as (sum, count): a number is (v, 1), a list of numbers (IFEval's per-instruction results)
    is (sum, len); anything else None."""
    if isinstance(value, (bool, int, float)):
        return float(value), 1.0
    if isinstance(value, (list, tuple)) and value and all(isinstance(x, (bool, int, float)) for x in value):
        return float(sum(value)), float(len(value))
    return None


def compare_runs(
    prepared: PreparedBenchmark,
    cand: tuple[dict[str, float], list[dict[str, Any]], dict[str, bool]],
    base: tuple[dict[str, float], list[dict[str, Any]], dict[str, bool]],
    seed: int,
    folder: Path,
) -> BenchmarkResult:
    """Both models' runs of one benchmark as a result with paired CIs; the per-item table is written to
    ``folder/<task>_items.parquet``."""
    from rrhf_core.evaluation.stats import paired_ratio_ci

    (c_agg, c_items, higher), (b_agg, b_items, _) = cand, base
    if [s["doc_id"] for s in c_items] != [s["doc_id"] for s in b_items]:
        raise ConfigError(f"benchmark {prepared.bench.task}: the two models were run on different items")
    names = [m for m in c_agg if m in b_agg]
    metrics = []
    rows: list[dict[str, Any]] = [
        {
            "doc_id": c["doc_id"],
            "prompt": _prompt_of(c),
            "candidate_answer": _answer_of(c),
            "baseline_answer": _answer_of(b),
        }
        for c, b in zip(c_items, b_items, strict=True)
    ]
    for name in names:
        pc = [_num_den(s.get(name)) for s in c_items]
        pb = [_num_den(s.get(name)) for s in b_items]
        ci = None
        if pc and all(p is not None for p in pc + pb):
            cn, cd = zip(*pc, strict=True)
            bn, bd = zip(*pb, strict=True)
            # a CI only where lm-eval's aggregate is the ratio of the items' sums (a mean, or a pooled share)
            if math.isclose(sum(cn) / sum(cd), c_agg[name], abs_tol=1e-9) and math.isclose(
                sum(bn) / sum(bd), b_agg[name], abs_tol=1e-9
            ):
                ci = paired_ratio_ci(cn, cd, bn, bd, seed=seed)
            for row, (n, d), (m, e) in zip(rows, pc, pb, strict=True):  # type: ignore[misc]
                row[f"candidate_{name}"], row[f"baseline_{name}"] = n / d, m / e
        metrics.append(
            MetricResult(
                name, c_agg[name], b_agg[name], c_agg[name] - b_agg[name], ci, higher.get(name, True)
            )
        )
    folder.mkdir(parents=True, exist_ok=True)
    items_file = folder / f"{prepared.bench.task}_items.parquet"
    from rrhf_core.data.contracts import atomic_write_parquet

    atomic_write_parquet(pa.Table.from_pylist(rows), items_file)
    return BenchmarkResult(
        prepared.bench.task,
        len(rows),
        prepared.data,
        prepared.bench.max_gen_toks,
        names[0] if names else "",
        metrics,
        str(items_file),
    )


def _prompt_of(sample: dict[str, Any]) -> str:
    args = sample.get("arguments")
    try:
        first = args[0][0] if isinstance(args, (list, tuple)) else None
    except (IndexError, TypeError, KeyError):
        first = None
    return first if isinstance(first, str) else json.dumps(sample.get("doc"), default=str)[:2000]


def _answer_of(sample: dict[str, Any]) -> str:
    resp = sample.get("filtered_resps") or sample.get("resps") or [""]
    while isinstance(resp, (list, tuple)) and resp:
        resp = resp[0]
    return resp if isinstance(resp, str) else str(resp)


def summary_line(result: dict[str, Any]) -> str:
    """One benchmark result in words (for the CLI and the artifact)."""
    parts = []
    for m in result["metrics"]:
        ci = m.get("difference_ci")
        ci_text = f" (95 % CI {ci[0]:+.3f}..{ci[1]:+.3f})" if ci else ""
        parts.append(
            f"{m['name']} {m['baseline']:.3f} -> {m['candidate']:.3f}, {m['difference']:+.3f}{ci_text}"
        )
    return f"{result['task']} on {result['items']} items ({result['data']}): " + "; ".join(parts)
