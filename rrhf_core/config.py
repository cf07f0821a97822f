"""Typed configuration of the training stage (pydantic: validated, documented, shown as a form by Prefect).

Defaults follow the paper's final recipe where it has one (rrhf_weight = sft_weight = 1, lr 2e-5,
3 % warmup, cosine decay, length_penalty 1) and are sized for a laptop CPU elsewhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from rrhf_core.errors import ConfigError
from rrhf_core.models import EMBEDDED_POLICY


class LoraConfig(BaseModel):
    """Low-rank adapters (peft). When enabled only the adapters train; the saved model is merged."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = Field(False, description="Train LoRA adapters instead of all weights.")
    r: int = Field(16, ge=1, description="Adapter rank.")
    alpha: int = Field(32, ge=1, description="Adapter scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the adapter input.")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="Modules that get adapters."
    )
    merge_on_save: bool = Field(
        True, description="Save the merged full model (True) or only the adapter (False)."
    )


class TrainConfig(BaseModel):
    """Everything the RRHF training stage needs."""

    model_config = ConfigDict(extra="forbid")

    # what to train, on what, where to write
    model: str = Field(
        EMBEDDED_POLICY, description="HF hub id, local folder, or 'embedded:smollm2-135m-instruct'."
    )
    data: str = Field(
        ...,
        description="Listwise training set (.parquet or .jsonl): prompt_id, messages, responses, rewards, sources.",
    )
    output_dir: str = Field(
        ..., description="Run folder: checkpoints/, model/, metrics.jsonl, train_summary.json."
    )
    cache_dir: str | None = Field(
        None, description="Cache for converted models (default $RRHF_CACHE_DIR or ~/.cache/rrhf)."
    )
    on_bad_row: Literal["error", "skip"] = Field(
        "error", description="Invalid training rows: fail naming them, or skip and report."
    )

    # the loss (paper Eq. 1-4)
    length_penalty: float = Field(
        1.0, ge=0.0, description="Score = summed log-prob / length ** length_penalty (Eq. 1)."
    )
    rrhf_weight: float = Field(1.0, ge=0.0, description="Weight of the ranking loss (paper: 1).")
    sft_weight: float = Field(
        1.0, ge=0.0, description="Weight of the SFT loss on the best response (paper: 1)."
    )
    sft_reduction: Literal["mean", "sum"] = Field(
        "mean", description="SFT NLL per token ('mean') or summed over tokens ('sum', Eq. 4)."
    )
    tie_policy: Literal["mean", "first"] = Field(
        "mean", description="Tied best rewards: share the SFT term ('mean') or take the first."
    )

    # tokenisation
    prompt_format: Literal["chat", "hh"] = Field(
        "chat", description="Render prompts with the chat template, or as HH text."
    )
    max_length: int = Field(512, ge=8, description="Maximum tokens per (prompt + response) row.")
    max_response_tokens: int = Field(
        256, ge=2, description="Responses are cut to this many tokens (EOS included)."
    )

    # optimisation
    learning_rate: float = Field(2e-5, gt=0.0, description="Peak learning rate (paper: 2e-5).")
    weight_decay: float = Field(0.0, ge=0.0)
    adam_beta1: float = Field(0.9, ge=0.0, lt=1.0)
    adam_beta2: float = Field(0.999, ge=0.0, lt=1.0)
    max_grad_norm: float = Field(1.0, ge=0.0, description="Gradient clipping norm (0 turns it off).")
    scheduler: Literal["cosine", "linear", "constant"] = Field("cosine", description="Decay after warmup.")
    warmup_ratio: float = Field(
        0.03, ge=0.0, le=1.0, description="Share of steps with linear warmup (paper: 3 %)."
    )
    epochs: float = Field(1.0, gt=0.0, description="Passes over the training set (fractional allowed).")
    max_steps: int | None = Field(
        None, ge=1, description="Stop after this many optimizer steps (overrides epochs)."
    )
    micro_batch_size: int = Field(
        1, ge=1, description="Prompts per forward pass per process (all their responses)."
    )
    grad_accum: int = Field(4, ge=1, description="Micro-batches per optimizer step per process.")
    seed: int = Field(0, description="Seed for data order, initialisation of adapters and dropout.")

    # hardware and memory
    bf16: Literal["auto", "on", "off"] = Field(
        "auto", description="bf16 autocast: 'auto' uses it where the hardware has fast bf16."
    )
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in backward to save memory."
    )
    prefix_sharing: bool = Field(
        True, description="Encode each prompt once for all its responses (block attention mask; same loss)."
    )
    lora: LoraConfig = Field(default_factory=LoraConfig)
    threads: int | None = Field(
        None, ge=1, description="torch CPU threads per process (default: torch's choice)."
    )

    # bookkeeping
    log_every: int = Field(1, ge=1, description="Optimizer steps between metric records.")
    checkpoint_every: int = Field(
        0, ge=0, description="Optimizer steps between checkpoints (0: only at the end)."
    )
    keep_checkpoints: int = Field(1, ge=1, description="How many recent checkpoints to keep.")
    resume: bool = Field(
        True, description="Resume from the latest checkpoint in output_dir when there is one."
    )
    save_model: bool = Field(True, description="Save the trained model as an HF folder in output_dir/model.")
    fail_at_step: int | None = Field(
        None, ge=1, description="Fault injection for testing failure handling: raise at this step."
    )

    @field_validator("bf16", mode="before")
    @classmethod
    def _bool_to_switch(cls, v: Any) -> Any:
        # YAML reads on/off as booleans
        return {True: "on", False: "off"}.get(v, v) if isinstance(v, bool) else v

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.max_response_tokens >= self.max_length:
            raise ValueError(
                f"max_response_tokens ({self.max_response_tokens}) must be below max_length ({self.max_length})"
            )
        return self

    def global_batch_size(self, world_size: int) -> int:
        """Prompts per optimizer step over all processes."""
        return self.micro_batch_size * self.grad_accum * world_size

    def resume_fingerprint(self) -> dict[str, Any]:
        """Fields that must match for a checkpoint to be resumed (what changes the trajectory)."""
        skip = {
            "fail_at_step",
            "output_dir",
            "cache_dir",
            "resume",
            "log_every",
            "checkpoint_every",
            "keep_checkpoints",
            "save_model",
            "threads",
            "max_steps",
            "epochs",
        }
        return self.model_dump(exclude=skip)


def format_validation_error(err: ValidationError, where: str) -> str:
    lines = [f"invalid {where}:"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(root)"
        lines.append(f"  {loc}: {e['msg']}")
    return "\n".join(lines)


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of settings, not {type(data).__name__}")
    return data


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply ``a.b=value`` (value parsed as YAML) to a nested dict in place."""
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r} must look like key=value (e.g. lora.r=8)")
    key, raw = assignment.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError:
        value = raw
    parts = key.strip().split(".")
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {assignment!r}: {p!r} is not a section")
    node[parts[-1]] = value


def build_config(cls: type[BaseModel], base: dict[str, Any], overrides: list[str], where: str) -> Any:
    data = dict(base)
    for o in overrides:
        apply_override(data, o)
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, where)) from None


def _one_or_many(v: Any) -> Any:
    """A single path given on the command line is a list of one."""
    return [v] if isinstance(v, str) else v


class IngestConfig(BaseModel):
    """Prompt ingestion: files or HF datasets -> prompts.parquet (+ rejects.jsonl, ingest_report.json)."""

    model_config = ConfigDict(extra="forbid")
    inputs: list[str] = Field(
        ..., description="Files (.jsonl/.json/.parquet/.csv, optionally .gz) or hf:NAME[:SPLIT]."
    )
    output_dir: str = Field(
        ..., description="Where prompts.parquet, rejects.jsonl and ingest_report.json go."
    )
    format: Literal["auto", "prompt", "messages", "hh", "rrhf"] = Field(
        "auto", description="Record format; auto picks by keys."
    )
    prompt_field: str = Field("prompt", description="Field holding a plain prompt (format 'prompt').")
    eval_share: float = Field(
        0.1, ge=0.0, le=1.0, description="Share of prompts in the eval split (by id hash)."
    )
    max_prompt_chars: int = Field(16000, ge=1, description="Longer prompts are rejected with that reason.")

    _inputs = field_validator("inputs", mode="before")(_one_or_many)


class SampleConfig(BaseModel):
    """Sampling k responses per prompt from a policy (plus the data's reference responses)."""

    model_config = ConfigDict(extra="forbid")
    prompts: str = Field(..., description="prompts.parquet from the ingest stage.")
    output_dir: str = Field(..., description="Where shards/ and samples.parquet go.")
    split: Literal["train", "eval", "all"] = Field("train", description="Which prompts to sample for.")
    limit: int | None = Field(None, ge=1, description="Only the first N prompts (after the split filter).")
    model: str = Field(EMBEDDED_POLICY, description="Policy: HF hub id, local folder or embedded:...")
    cache_dir: str | None = Field(None, description="Cache for converted models.")
    backend: Literal["auto", "vllm", "hf"] = Field(
        "auto", description="auto: vLLM where CUDA is present, else transformers."
    )
    k: int = Field(4, ge=1, description="Samples per prompt.")
    strategy: Literal["sample", "beam", "diverse_beam"] = Field(
        "sample",
        description="Top-p sampling, beam search (k beams), or diverse beam search (the paper's DP; transformers).",
    )
    num_beam_groups: int = Field(4, ge=1, description="Diverse beam search: groups (k must be a multiple).")
    diversity_penalty: float = Field(
        1.0, ge=0.0, description="Diverse beam search: cost of a token another group chose."
    )
    temperature: float = Field(0.8, ge=0.0, description="Sampling temperature (0: greedy).")
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    max_new_tokens: int = Field(128, ge=1)
    stop: list[str] | None = Field(
        None, description="Stop strings; default for prompt_format hh: ['\\n\\nHuman:']."
    )
    seed: int = Field(0)
    prompt_format: Literal["chat", "hh"] = Field("chat", description="Chat template, or HH text.")
    max_prompt_tokens: int = Field(
        512, ge=8, description="Longer prompts are left-truncated at a turn boundary."
    )
    include_references: bool = Field(True, description="Add the data's reference responses as candidates.")
    shard_size: int = Field(32, ge=1, description="Prompts per shard (the unit of resume).")
    batch_size: int = Field(8, ge=1, description="Prompts per generate call (transformers backend).")
    dtype: Literal["auto", "bf16", "fp32"] = Field("auto")
    vllm_memory_utilization: float = Field(0.3, gt=0.0, le=1.0, description="vLLM memory share (KV cache).")
    vllm_max_model_len: int | None = Field(
        None, ge=64, description="vLLM context length (default: the model's)."
    )

    @model_validator(mode="after")
    def _strategy_consistent(self) -> SampleConfig:
        if self.strategy == "diverse_beam":
            if self.k % self.num_beam_groups:
                raise ValueError(
                    f"k ({self.k}) must be a multiple of num_beam_groups ({self.num_beam_groups})"
                )
            if self.backend == "vllm":
                raise ValueError(
                    "vLLM has no diverse beam search; use backend 'hf' (or 'auto') for strategy diverse_beam"
                )
        return self

    def stop_strings(self) -> tuple[str, ...]:
        if self.stop is not None:
            return tuple(self.stop)
        return ("\n\nHuman:",) if self.prompt_format == "hh" else ()

    def sampler_id(self) -> str:
        """Hash of everything that changes the samples (the `sampler` column, and the shard names)."""
        import hashlib
        import json

        keys = (
            "model",
            "backend",
            "k",
            "strategy",
            "num_beam_groups",
            "diversity_penalty",
            "temperature",
            "top_p",
            "max_new_tokens",
            "seed",
            "prompt_format",
            "max_prompt_tokens",
            "shard_size",
            "dtype",
        )
        payload = {k: getattr(self, k) for k in keys} | {"stop": self.stop_strings()}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


class ScoreConfig(BaseModel):
    """Scoring every candidate response with a reward."""

    model_config = ConfigDict(extra="forbid")
    samples: list[str] = Field(..., description="samples.parquet file(s) from the sampling stage.")
    prompts: str = Field(..., description="prompts.parquet (for the prompt each response answers).")
    output_dir: str = Field(..., description="Where scores.parquet goes.")
    reward: str = Field(
        "embedded:minilm-helpfulness",
        description="embedded:minilm-helpfulness, an HF reward model id/path, or module:function.",
    )
    batch_size: int = Field(16, ge=1)
    max_length: int = Field(
        1024, ge=16, description="Reward-model input tokens (longer inputs lose their start)."
    )
    bucket: bool = Field(True, description="Sort by length before batching (less padding).")
    cache_path: str | None = Field(
        None, description="SQLite score cache (default: <cache_dir>/scores.sqlite)."
    )

    _samples = field_validator("samples", mode="before")(_one_or_many)


class BuildConfig(BaseModel):
    """Joining prompts, samples and scores into the listwise training set."""

    model_config = ConfigDict(extra="forbid")
    prompts: str = Field(..., description="prompts.parquet")
    samples: list[str] = Field(..., description="samples.parquet file(s)")
    scores: list[str] = Field(..., description="scores.parquet file(s)")
    output_dir: str = Field(..., description="Where train.parquet and its statistics go.")
    max_k: int = Field(
        8, ge=2, description="At most this many responses per prompt (best kept, the rest spread by reward)."
    )
    min_reward_gap: float = Field(
        0.0, ge=0.0, description="Drop prompts whose best-worst reward gap is not above this."
    )

    _lists = field_validator("samples", "scores", mode="before")(_one_or_many)


class EvalConfig(BaseModel):
    """Held-out evaluation of a candidate policy against a baseline (champion or base model)."""

    model_config = ConfigDict(extra="forbid")
    prompts: str = Field(..., description="prompts.parquet with an eval split.")
    output_dir: str = Field(..., description="Where eval_samples.parquet and eval_report.json go.")
    candidate: str = Field(..., description="The trained model (folder or id).")
    baseline: str = Field(EMBEDDED_POLICY, description="The current champion, or the base model.")
    split: Literal["train", "eval"] = Field("eval", description="Which prompts to evaluate on.")
    limit: int | None = Field(None, ge=1, description="Only the first N prompts.")
    reward: str = Field("embedded:minilm-helpfulness", description="Reward spec (as for the score stage).")
    max_new_tokens: int = Field(96, ge=1)
    temperature: float = Field(0.0, ge=0.0, description="0: greedy, deterministic answers.")
    seed: int = Field(0)
    prompt_format: Literal["chat", "hh"] = Field("chat")
    max_prompt_tokens: int = Field(512, ge=8)
    batch_size: int = Field(8, ge=1)
    tie_margin: float = Field(1e-6, ge=0.0, description="Rewards closer than this count as a tie.")
    preference_accuracy: bool = Field(
        True, description="Score HH chosen/rejected pairs with each policy (Table 5)."
    )
    best_of_n_ceiling: float | None = Field(
        None, description="Mean best-of-n reward of the training samples."
    )
    cache_dir: str | None = Field(None)


class SampleSettings(BaseModel):
    """Sampling settings of a pipeline run (paths are filled in by the pipeline)."""

    model_config = ConfigDict(extra="forbid")
    backend: Literal["auto", "vllm", "hf"] = "auto"
    k: int = Field(4, ge=1)
    strategy: Literal["sample", "beam", "diverse_beam"] = "sample"
    num_beam_groups: int = Field(4, ge=1)
    diversity_penalty: float = Field(1.0, ge=0.0)
    temperature: float = Field(0.8, ge=0.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    max_new_tokens: int = Field(64, ge=1)
    limit: int | None = Field(None, ge=1, description="Only the first N training prompts.")
    include_references: bool = True
    dtype: Literal["auto", "bf16", "fp32"] = "auto"
    seed: int = 0


class TrainSettings(BaseModel):
    """Training settings of a pipeline run."""

    model_config = ConfigDict(extra="forbid")
    learning_rate: float = Field(2e-5, gt=0.0)
    epochs: float = Field(1.0, gt=0.0)
    max_steps: int | None = Field(None, ge=1)
    micro_batch_size: int = Field(1, ge=1)
    grad_accum: int = Field(4, ge=1)
    warmup_ratio: float = Field(0.03, ge=0.0, le=1.0)
    max_length: int = Field(512, ge=8)
    max_response_tokens: int = Field(256, ge=2)
    length_penalty: float = Field(1.0, ge=0.0)
    rrhf_weight: float = Field(1.0, ge=0.0)
    sft_weight: float = Field(1.0, ge=0.0)
    bf16: Literal["auto", "on", "off"] = "auto"
    gradient_checkpointing: bool = False
    lora: LoraConfig = Field(default_factory=LoraConfig)
    seed: int = 0
    fail_at_step: int | None = Field(
        None, ge=1, description="Testing aid: raise at this step (to test failure paths)."
    )


class EvalSettings(BaseModel):
    """Held-out evaluation settings of a pipeline run."""

    model_config = ConfigDict(extra="forbid")
    limit: int | None = Field(None, ge=1)
    max_new_tokens: int = Field(96, ge=1)
    temperature: float = Field(0.0, ge=0.0)
    preference_accuracy: bool = True


class PipelineConfig(BaseModel):
    """One RRHF round: ingest -> sample -> score -> build -> train -> evaluate -> register/promote."""

    model_config = ConfigDict(extra="forbid")
    workdir: str = Field(
        "runs/pipeline", description="Stage outputs, the MLflow store and the run summaries."
    )
    prompts: list[str] = Field(["embedded:demo-prompts"], description="Prompt inputs (as for ingest).")
    eval_share: float = Field(0.25, ge=0.0, le=1.0, description="Share of prompts held out for evaluation.")
    policy: str = Field(
        EMBEDDED_POLICY, description="Base policy (used when no champion exists or from_champion is off)."
    )
    from_champion: bool = Field(
        False, description="Sample from and train the current champion (iterative RRHF, IP-n)."
    )
    reward: str = Field("embedded:minilm-helpfulness", description="Reward spec (as for the score stage).")
    prompt_format: Literal["chat", "hh"] = "chat"
    max_prompt_tokens: int = Field(512, ge=8)
    max_k: int = Field(8, ge=2)
    sample: SampleSettings = Field(default_factory=SampleSettings)
    train: TrainSettings = Field(default_factory=TrainSettings)
    evaluate: EvalSettings = Field(default_factory=EvalSettings)
    gate: dict[str, float] = Field(
        default_factory=dict, description="Promotion gate overrides (see GateConfig)."
    )
    registered_model: str = Field("rrhf-policy", description="MLflow registered model name.")
    experiment: str = Field("rrhf", description="MLflow experiment name.")
    tracking_uri: str | None = Field(None, description="MLflow tracking URI (default: SQLite in workdir).")
    cache_dir: str | None = Field(None, description="Cache for converted models and scores.")

    _prompts = field_validator("prompts", mode="before")(_one_or_many)
