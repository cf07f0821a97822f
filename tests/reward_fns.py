"""Reward functions used by the tests through the `module:function` reward backend."""

import math
import os
import time


def count_a(messages, response):
    return float(response.count("a"))


def broken(messages, response):
    return math.nan if "nan" in response else 1.0


def checksum(messages, response):
    """A deterministic reward that differs between almost any two texts (for pipelines on random tiny models)."""
    return float(sum(map(ord, response)) % 97)


# reward functions that break the contract (tests/test_bad_inputs.py): each must be refused, naming it and the value


def as_string(messages, response):
    return "1.5"


def as_none(messages, response):
    return None


def as_word(messages, response):
    return "high"


def as_list(messages, response):
    return [1.0]


def as_inf(messages, response):
    return math.inf


_calls = 0


def stalls_after_100(messages, response):
    """``checksum``, but with RRHF_TEST_STALL set the 101st call hangs (a scoring run to kill mid-way)."""
    global _calls
    _calls += 1
    if os.environ.get("RRHF_TEST_STALL") and _calls > 100:
        time.sleep(600)
    return float(sum(map(ord, response)) % 97)
