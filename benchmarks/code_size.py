"""Module and function sizes of the library (lines of code), to keep the units small enough to hold in mind.

    python benchmarks/code_size.py [--top 5] [PACKAGE ...]     (default: rrhf_core tasks flows rrhf_cli)

Prints, per package and overall, the median, 90th percentile and maximum of module length (non-blank lines) and
function length (lines from ``def`` to the last line of its body, nested functions counted on their own too),
and the longest functions.
"""

from __future__ import annotations

import argparse
import ast
import statistics
from pathlib import Path


def _p90(values: list[int]) -> float:
    if len(values) < 2:
        return float(values[0]) if values else 0.0
    return statistics.quantiles(values, n=10, method="inclusive")[-1]


def sizes(root: Path) -> tuple[dict[str, int], dict[str, int]]:
    modules, functions = {}, {}
    for path in sorted(root.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        modules[str(path)] = sum(1 for line in text.splitlines() if line.strip())
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                functions[f"{path}:{node.name}"] = (node.end_lineno or node.lineno) - node.lineno + 1
    return modules, functions


def row(name: str, values: list[int]) -> str:
    if not values:
        return f"{name:<28}{0:>6}"
    return f"{name:<28}{len(values):>6}{statistics.median(values):>9.0f}{_p90(values):>8.0f}{max(values):>7}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("packages", nargs="*", default=["rrhf_core", "tasks", "flows", "rrhf_cli"])
    ap.add_argument("--top", type=int, default=5)
    args = ap.parse_args()
    all_mods: dict[str, int] = {}
    all_funcs: dict[str, int] = {}
    print(f"{'':<28}{'count':>6}{'median':>9}{'p90':>8}{'max':>7}")
    for pkg in args.packages:
        mods, funcs = sizes(Path(pkg))
        all_mods |= mods
        all_funcs |= funcs
        print(row(f"{pkg} modules", list(mods.values())))
        print(row(f"{pkg} functions", list(funcs.values())))
    print(row("all modules", list(all_mods.values())))
    print(row("all functions", list(all_funcs.values())))
    print("\nlongest functions:")
    for name, n in sorted(all_funcs.items(), key=lambda kv: -kv[1])[: args.top]:
        print(f"  {n:>4}  {name}")
    print("longest modules:")
    for name, n in sorted(all_mods.items(), key=lambda kv: -kv[1])[: args.top]:
        print(f"  {n:>4}  {name}")


if __name__ == "__main__":
    main()
