"""Reward-model training: preference pairs (:mod:`.pairs`) -> a Bradley-Terry-trained single-logit classifier
(:mod:`.loss`, :mod:`.trainer`) that the scoring stage and the evaluation judge load as ``--reward PATH``."""
