"""Prefect tasks: thin wrappers that call one rrhf_core entry point and return paths or URIs."""
