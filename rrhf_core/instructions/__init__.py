"""Verifiable instruction following: constraints a program can check, the project's own prompt suite built from
them, and the rewards that check them (the demo's training reward and its judge)."""
