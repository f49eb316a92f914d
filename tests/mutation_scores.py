"""Per-module mutation scores from ``mutmut results --all true`` (run by ``make mutation``; not a test module).

Usage: ``mutmut results --all true | python tests/mutation_scores.py``. Prints a Markdown table: mutants,
killed (a test failed; of them, ``timeout`` ran past mutmut's time limit and count as killed, as mutmut counts
them), survived, no tests (no selected test runs the mutated function), score = killed / mutants.
"""

from __future__ import annotations

import sys
from collections import Counter, defaultdict

KILLED = {"killed", "timeout", "segfault"}


def main() -> None:
    by_module: dict[str, Counter] = defaultdict(Counter)
    for line in sys.stdin:
        name, sep, status = line.strip().rpartition(": ")
        if not sep or "__mutmut_" not in name:
            continue
        module = name.rsplit(".x", 1)[0]
        by_module[module][status] += 1
    print("| module | mutants | killed (of them timeout) | survived | no tests | other | score |")
    print("|---|---|---|---|---|---|---|")
    for module, counts in sorted(by_module.items()):
        total = sum(counts.values())
        killed = sum(counts[s] for s in KILLED)
        other = total - killed - counts["survived"] - counts["no tests"]
        print(f"| `{module}` | {total} | {killed} ({counts['timeout']}) | {counts['survived']} "
              f"| {counts['no tests']} | {other} | {100 * killed / total:.1f} % |")


if __name__ == "__main__":
    main()
