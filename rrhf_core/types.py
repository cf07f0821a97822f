"""Small shared type aliases (no dependencies: importable from the GPU benchmark script)."""

from typing import Literal

# how prompts are rendered, in every stage: the tokenizer's chat template, or Anthropic HH text
PromptFormat = Literal["chat", "hh"]
