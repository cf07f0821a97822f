"""Prefect flows: one per stage and the end-to-end pipeline; they only call tasks in order."""
