"""The registered policy as an MLflow pyfunc chat model (logged as code: MLflow copies this file into the model).

Input: rows with ``messages``, a chat (``[{"role": "user", "content": "..."}]``); params ``max_new_tokens``
(default 128), ``temperature`` (0 = greedy, the default) and ``top_p``. Each chat is rendered exactly as training
rendered prompts (the tokenizer's chat template with the generation prompt, or HH text for ``prompt_format: hh``,
from the model config) and only the new tokens are decoded, so the answer never echoes the prompt. Output: one
answer string per row.

Each answer is recorded as an MLflow trace (a ``CHAT_MODEL`` span: inputs ``{"messages": chat}``, outputs
``{"answer": text}``, the generation params as attributes; tags ``rrhf.served`` and ``rrhf.model_sha256``, the
weights that answered) in the tracking server and experiment of the serving process (``MLFLOW_TRACKING_URI``,
``MLFLOW_EXPERIMENT_NAME``: ``rrhf serve`` sets both). Feedback on a trace (``mlflow.log_feedback``) and the chats
themselves are what the next round's prompt source ``arrivals.traces`` reads (``tasks/traces.py``).

    mlflow models serve -m models:/rrhf-policy@champion --env-manager local -p 5001
    curl -s localhost:5001/invocations -H 'Content-Type: application/json' -d \
      '{"dataframe_records": [{"messages": [{"role": "user", "content": "Hi"}]}], "params": {"max_new_tokens": 32}}'

This module is only ever loaded by MLflow (it registers the model object on import); import nothing from it.
"""

from __future__ import annotations

from typing import Any

import mlflow
from mlflow.pyfunc import PythonModel

from rrhf_core import pretrained
from rrhf_core.serving import ARTIFACT, DEFAULT_PARAMS, answer, chats, render


class ChatModel(PythonModel):
    def load_context(self, context: Any) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = context.artifacts[ARTIFACT]
        self.torch = torch
        self.tokenizer = pretrained.load(AutoTokenizer, path, "served policy")
        self.model = pretrained.load(AutoModelForCausalLM, path, "served policy", dtype=torch.float32).eval()
        config = context.model_config or {}
        self.prompt_format = config.get("prompt_format", "chat")
        self.trace_tags = {
            "rrhf.served": str(config.get("registered_model", "rrhf-policy")),
            "rrhf.model_sha256": str(config.get("model_sha256", "unknown")),
        }

    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]  # MLflow reads hints as a schema
        p = {**DEFAULT_PARAMS, **(params or {})}
        greedy = float(p["temperature"]) <= 0
        sampling = {} if greedy else {"temperature": float(p["temperature"]), "top_p": float(p["top_p"])}
        out = []
        for chat in chats(model_input):
            with mlflow.start_span(name="chat", span_type="CHAT_MODEL") as span:
                span.set_inputs({"messages": chat})
                span.set_attributes({f"rrhf.{k}": v for k, v in p.items()})
                # no active span while MLflow validates the model at logging time (tracing is off then)
                if mlflow.get_current_active_span() is not None:
                    mlflow.update_current_trace(tags=self.trace_tags)
                text = self._generate(chat, p, greedy, sampling)
                span.set_outputs({"answer": text})
            out.append(text)
        return out

    def _generate(self, chat: list[dict[str, str]], p: dict[str, Any], greedy: bool, sampling: dict) -> str:
        enc = self.tokenizer(
            render(self.tokenizer, chat, self.prompt_format), return_tensors="pt", add_special_tokens=False
        )
        with self.torch.no_grad():
            ids = self.model.generate(
                **enc,
                max_new_tokens=int(p["max_new_tokens"]),
                do_sample=not greedy,
                pad_token_id=(
                    self.tokenizer.eos_token_id
                    if self.tokenizer.pad_token_id is None
                    else self.tokenizer.pad_token_id
                ),
                **sampling,
            )
        new = ids[0, enc["input_ids"].shape[1] :]
        return answer(self.tokenizer.decode(new, skip_special_tokens=True), self.prompt_format)


mlflow.models.set_model(ChatModel())
