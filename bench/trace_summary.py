"""Summarizes a Kiln Chrome trace (SessionOptions::trace_path): GPU or CPU time per node and per
op: each node's median over the runs the trace holds, the largest first.

    python3 bench/trace_summary.py TRACE.json [TOP]
"""
import collections
import json
import statistics
import sys


def main():
    path = sys.argv[1]
    top = int(sys.argv[2]) if len(sys.argv) > 2 else 25
    events = json.load(open(path))["traceEvents"]
    if not events:
        print(f"{path}: no events")
        return
    durations = collections.defaultdict(list)  # node: its durations, one per run
    op_of = {}
    for e in events:
        durations[e["name"]].append(e["dur"])
        op_of[e["name"]] = e["cat"]
    # A node runs once per run: the most frequent count is the number of runs. Each node's
    # median over them leaves out the first runs' one-off costs (uploads, algorithm searches).
    runs = collections.Counter(len(d) for d in durations.values()).most_common(1)[0][0]
    by_node = {name: statistics.median(d) for name, d in durations.items()}
    by_op = collections.defaultdict(float)
    for name, us in by_node.items():
        by_op[op_of[name]] += us
    total = sum(by_op.values())
    print(f"{path}: {len(by_node)} nodes, {runs} runs, {total:.1f} us per run (node medians)")
    print(f"  {'op':32s} {'us/run':>10s} {'share':>7s}")
    for op, us in sorted(by_op.items(), key=lambda kv: -kv[1])[:top]:
        print(f"  {op:32s} {us:10.1f} {us / total:7.1%}")
    print(f"  {'node':56s} {'op':24s} {'us/run':>9s}")
    for name, us in sorted(by_node.items(), key=lambda kv: -kv[1])[:top]:
        print(f"  {name[-56:]:56s} {op_of[name][:24]:24s} {us:9.1f}")


if __name__ == "__main__":
    main()
