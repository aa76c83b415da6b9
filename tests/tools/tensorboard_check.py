"""Reads Kiln's TensorBoard logs with TensorBoard's own reader and checks what it finds.

Usage: tensorboard_check.py LOG_DIR GRAPH_NODES
"""
import math
import sys

from tensorboard.backend.event_processing import event_accumulator


def main():
    log_dir, nodes = sys.argv[1], int(sys.argv[2])
    acc = event_accumulator.EventAccumulator(
        log_dir, size_guidance={event_accumulator.SCALARS: 0, event_accumulator.TENSORS: 0})
    acc.Reload()
    tags = acc.Tags()
    for tag in ("train/loss", "train/learning_rate", "test/loss", "test/accuracy"):
        assert tag in tags["scalars"], f"scalar {tag} missing; TensorBoard sees {tags['scalars']}"
    loss = [e.value for e in acc.Scalars("train/loss")]
    assert loss and all(math.isfinite(v) and v > 0 for v in loss), f"train/loss {loss}"
    steps = [e.step for e in acc.Scalars("train/loss")]
    assert steps == sorted(steps) and steps[0] > 0, f"train/loss steps {steps}"
    lr = [e.value for e in acc.Scalars("train/learning_rate")]
    assert all(0 < v < 1 for v in lr), f"learning rates {lr}"
    accuracy = acc.Scalars("test/accuracy")[-1].value
    assert 0.1 < accuracy <= 1, f"test/accuracy {accuracy}"
    assert "run/options" in tags["tensors"], f"text run/options missing: {tags['tensors']}"
    options = acc.Tensors("run/options")[0].tensor_proto.string_val[0].decode()
    assert "| epochs | 1 |" in options, options
    graph = acc.Graph()
    assert len(graph.node) == nodes, f"graph has {len(graph.node)} nodes, expected {nodes}"
    scopes = {n.name.split("/")[0] for n in graph.node if "/" in n.name}
    assert scopes, "no name scopes in the graph"
    print(f"tensorboard_check: {len(loss)} loss points, accuracy {accuracy:.3f}, "
          f"{len(graph.node)} graph nodes in {len(scopes)} top-level scopes")


if __name__ == "__main__":
    main()
