#!/usr/bin/env python3
"""Checks that src/ is a ladder: every top-level module uses only modules on lower rungs.

The rungs are listed below, bottom first (ARCHITECTURE.md draws the same ladder). A reference is
any `crate::name` path outside `#[cfg(test)]` code. Prints every upward or sideways edge and
exits 1 if there is one, so CI fails when a change makes the graph a web again.
"""
import os
import re
import sys

RUNGS = [
    ["exit", "secret", "dn", "telemetry"],
    ["model"],
    ["ledger"],
    ["config"],
    ["source"],
    ["directory"],
    ["plan"],
    ["planfile"],
    ["store"],
    ["sinks"],
    ["engine"],
    ["report"],
    ["app", "manual"],
    ["daemon"],
    ["cli"],
    ["proptests", "fuzzing"],  # test/fuzz-only: property tests and fuzz entry points of every parser
]
RUNG = {name: level for level, names in enumerate(RUNGS) for name in names}


def references(src):
    found = {}
    for root, _, files in os.walk(src):
        for file in files:
            if not file.endswith(".rs"):
                continue
            path = os.path.join(root, file)
            top = os.path.relpath(path, src).split(os.sep)[0].removesuffix(".rs")
            if top in ("lib", "main"):
                continue
            text = open(path, encoding="utf-8").read()
            cut = re.search(r"^\s*#\[cfg\(test\)\]", text, re.M)
            text = re.sub(r"//[^\n]*", "", text[: cut.start()] if cut else text)
            names = set(re.findall(r"\bcrate::(\w+)", text))
            for group in re.findall(r"\buse\s+crate::\{([^}]*)\}", text, re.S):
                names |= set(re.findall(r"(?:^|,)\s*(\w+)", group))
            found.setdefault(top, set()).update(names & set(RUNG) - {top})
    return found


def main():
    src = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "src")
    found = references(src)
    problems = []
    for module in sorted(found):
        if module not in RUNG:
            problems.append(f"{module}: not on the ladder; add it to RUNGS in {__file__} and to ARCHITECTURE.md")
            continue
        for used in sorted(found[module]):
            if RUNG[used] >= RUNG[module]:
                problems.append(f"{module} uses {used}, which is not below it")
    for problem in problems:
        print(problem)
    edges = sum(len(v) for v in found.values())
    print(f"{len(found)} modules on {len(RUNGS)} rungs, {edges} edges, {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
