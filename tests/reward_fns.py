"""Reward functions used by the tests through the `module:function` reward backend."""

import math


def count_a(messages, response):
    return float(response.count("a"))


def broken(messages, response):
    return math.nan if "nan" in response else 1.0


def checksum(messages, response):
    """A deterministic reward that differs between almost any two texts (for pipelines on random tiny models)."""
    return float(sum(map(ord, response)) % 97)
