"""Small shared type aliases (no dependencies: importable from the GPU benchmark script)."""

from typing import Literal

# how prompts are rendered, in every stage: the tokenizer's chat template, or Anthropic HH text
PromptFormat = Literal["chat", "hh"]
# what a stage computes in, spelled the same in every stage: bf16 (autocast), fp32, or auto (bf16 where the hardware
# has fast bf16)
Precision = Literal["auto", "bf16", "fp32"]
