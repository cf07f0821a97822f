"""Scoring: reward backends (:mod:`.reward`) and the stage that scores every sampled response (:mod:`.stage`)."""

EMBEDDED_REWARD = "embedded:minilm-helpfulness"
# the verifiable-instruction rewards (rrhf_core.instructions.reward): training reward, judge, relevance
INSTRUCTION_REWARDS = ("embedded:constraint-reward", "embedded:constraint-pass", "embedded:relevance")
