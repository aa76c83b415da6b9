"""Summarizes a Kiln Chrome trace (SessionOptions::trace_path): GPU or CPU time per node and per
op, averaged over the runs the trace holds, the largest first.

    python3 bench/trace_summary.py TRACE.json [TOP]
"""
import collections
import json
import sys


def main():
    path = sys.argv[1]
    top = int(sys.argv[2]) if len(sys.argv) > 2 else 25
    events = json.load(open(path))["traceEvents"]
    if not events:
        print(f"{path}: no events")
        return
    by_node = collections.defaultdict(lambda: [0.0, 0, ""])
    by_op = collections.defaultdict(float)
    for e in events:
        node = by_node[e["name"]]
        node[0] += e["dur"]
        node[1] += 1
        node[2] = e["cat"]
        by_op[e["cat"]] += e["dur"]
    # A node runs once per run: the most frequent count is the number of runs.
    runs = collections.Counter(n[1] for n in by_node.values()).most_common(1)[0][0]
    total = sum(by_op.values()) / runs
    print(f"{path}: {len(by_node)} nodes, {runs} runs, {total:.1f} us of kernels per run")
    print(f"  {'op':32s} {'us/run':>10s} {'share':>7s}")
    for op, dur in sorted(by_op.items(), key=lambda kv: -kv[1])[:top]:
        print(f"  {op:32s} {dur / runs:10.1f} {dur / runs / total:7.1%}")
    print(f"  {'node':56s} {'op':24s} {'us/run':>9s}")
    for name, (dur, count, op) in sorted(by_node.items(), key=lambda kv: -kv[1][0])[:top]:
        print(f"  {name[-56:]:56s} {op[:24]:24s} {dur / runs:9.1f}")


if __name__ == "__main__":
    main()
