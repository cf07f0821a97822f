"""Reward functions used by the tests through the `module:function` reward backend."""

import math


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
