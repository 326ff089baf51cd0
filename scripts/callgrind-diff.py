#!/usr/bin/env python3
"""Where two callgrind profiles differ, per function (self cost), per request.

    scripts/callgrind-diff.py BASE.1 OTHER.1 REQUESTS [TOP]

Runs `callgrind_annotate --inclusive=no` on both profiles and prints the functions whose
instructions per request changed most, largest increase first, then the largest decreases.
scripts/bench-instructions calls it on the two gateway builds' profiles.
"""
import re
import subprocess
import sys

LINE = re.compile(r"\s*([\d,]+)\s+\(\s*([\d.]+)%\)\s+(.*)")


def self_costs(profile):
    out = subprocess.run(
        ["callgrind_annotate", "--inclusive=no", "--threshold=100", profile],
        check=True, capture_output=True, text=True,
    ).stdout
    costs = {}
    for line in out.splitlines():
        m = LINE.match(line)
        # Frames above 50 % are the thread's outer frames that the dump reports whole.
        if m and float(m.group(2)) < 50:
            name = re.sub(r" \[.*\]$", "", m.group(3).strip())
            costs[name] = costs.get(name, 0) + int(m.group(1).replace(",", ""))
    return costs


def main():
    base, other, requests = sys.argv[1], sys.argv[2], int(sys.argv[3])
    top = int(sys.argv[4]) if len(sys.argv) > 4 else 25
    a, b = self_costs(base), self_costs(other)
    diff = sorted(((b.get(k, 0) - a.get(k, 0)) / requests, k) for k in set(a) | set(b))
    print(f"  per request: {sum(d for d, _ in diff):+.0f} instructions; largest changes:")
    for d, name in diff[::-1][:top]:
        if d > 0:
            print(f"  {d:+8.0f}  {name[:150]}")
    for d, name in diff[: top // 3]:
        if d < 0:
            print(f"  {d:+8.0f}  {name[:150]}")


if __name__ == "__main__":
    main()
