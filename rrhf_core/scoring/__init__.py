"""Scoring: reward backends (:mod:`.reward`) and the stage that scores every sampled response (:mod:`.stage`)."""

EMBEDDED_REWARD = "embedded:minilm-helpfulness"
