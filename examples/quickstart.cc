// Quick start: build a small graph, run it, save it, load it back and run it again.
#include <kiln/kiln.h>

#include <cstdio>

using namespace kiln;

int main(int argc, char** argv) {
  const std::string path = argc > 1 ? argv[1] : "quickstart.pb";
  if (path == "--help" || path == "-h") {
    std::printf(
        "usage: quickstart [GRAPH.pb]: builds a small graph, runs it, saves it (default\n"
        "quickstart.pb), loads it back and checks the loaded graph gives the same result\n");
    return 0;
  }
  Graph g;
  Value x = g.placeholder("x", f32, {-1, 4});  // batch size known at run time
  Value w = random_normal(g, {4, 3}, 0.0, 0.5, /*seed=*/42);
  Value b = fill(g, {3}, 0.1);
  Value logits = matmul(x, w) + b;
  Value probs = exp(logits) / sum(exp(logits), {1}, /*keepdims=*/true);
  Value label = argmax(probs, 1);
  g.add_signature({"predict", {x}, {probs, label}, {}});

  Session sess(g);
  Tensor batch = Tensor::from_vector<float>({1, 2, 3, 4, -1, 0, 1, 0}, {2, 4});
  std::vector<Tensor> out = sess.run({{x, batch}}, {probs, label});
  std::printf("probs  %s\nlabels %s\n", out[0].to_string().c_str(), out[1].to_string().c_str());

  save_graph(g, path);
  std::unique_ptr<Graph> loaded = load_graph(path);
  Session again(*loaded);
  std::vector<Tensor> out2 = again.run_signature("predict", {batch});
  std::printf("saved %d nodes to %s; the loaded graph gives %s\n", g.num_nodes(), path.c_str(),
              equal_bits(out[0], out2[0]) ? "identical results" : "DIFFERENT results");
  return equal_bits(out[0], out2[0]) ? 0 : 1;
}
