// The shared Fashion-MNIST training driver (see fashion_mnist_trainer.h).
#include "fashion_mnist_trainer.h"

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <numeric>

namespace kiln::examples {
namespace {

struct Args {
  std::string data = "/usr/share/datasets/fashion-mnist";
  std::string out = "out";
  int64_t epochs = 10;
  int64_t batch = 128;
  int threads = 0;
  uint64_t seed = 0;
  bool resume = false;
  int64_t stop_after = -1;         // stop (as if interrupted) after this many epochs
  std::string trace;               // write a Chrome trace of every step here
  Device device = Device::best();  // the GPU where one is usable, else the CPU
  std::string device_why;          // why this device (for the closing summary)
  bool cuda_graphs = false;        // replay each step as a captured CUDA Graph
  std::string amp;                 // "", "bf16" or "f16"
  int64_t train_limit = 0;         // > 0: train on the first this many images only (tests)
  int64_t test_limit = 0;          // > 0: evaluate on the first this many test images only
  std::string logdir;              // TensorBoard event files (default: <out>/logs)
  bool help = false;
};

constexpr const char* kUsage =
    "options:\n"
    "  --data DIR        Fashion-MNIST's .gz files (default /usr/share/datasets/fashion-mnist)\n"
    "  --out DIR         where the graph, checkpoint and logs go (default out)\n"
    "  --epochs N        training epochs\n"
    "  --batch N         global batch size (split over the ranks of a launched job)\n"
    "  --threads N       CPU threads (default: one per core)\n"
    "  --seed N          shuffling seed\n"
    "  --resume          continue from the saved graph and checkpoint in --out (a job\n"
    "                    restarted by kiln-launch --max-restarts or torchrun does it itself)\n"
    "  --stop-after N    stop after N epochs (as if interrupted)\n"
    "  --trace FILE      write a Chrome trace of every step\n"
    "  --device D        cpu, cuda, cuda:N or best (default best: a usable GPU, else the CPU)\n"
    "  --cuda-graphs     replay each step as a captured CUDA Graph\n"
    "  --amp T           autocast to bf16 or f16\n"
    "  --train-limit N   train on the first N images only\n"
    "  --test-limit N    evaluate on the first N test images only\n"
    "  --logdir DIR      TensorBoard logs: loss, learning rate, accuracy, the graph, the options\n"
    "                    (default <out>/logs; view with tensorboard --logdir DIR)\n";

Args parse(int argc, char** argv, const TrainDefaults& defaults) {
  Args a;
  a.epochs = defaults.epochs;
  a.batch = defaults.batch;
  for (int i = 1; i < argc; ++i) {
    std::string k = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw Error(str("[args] ", k, " needs a value"));
      return argv[++i];
    };
    if (k == "--data")
      a.data = value();
    else if (k == "--out")
      a.out = value();
    else if (k == "--epochs")
      a.epochs = std::stoll(value());
    else if (k == "--batch")
      a.batch = std::stoll(value());
    else if (k == "--threads")
      a.threads = std::stoi(value());
    else if (k == "--seed")
      a.seed = std::stoull(value());
    else if (k == "--train-limit")
      a.train_limit = std::stoll(value());
    else if (k == "--test-limit")
      a.test_limit = std::stoll(value());
    else if (k == "--resume")
      a.resume = true;
    else if (k == "--stop-after")
      a.stop_after = std::stoll(value());
    else if (k == "--trace")
      a.trace = value();
    else if (k == "--logdir")
      a.logdir = value();
    else if (k == "--help" || k == "-h")
      a.help = true;
    else if (k == "--device") {
      const std::string d = value();
      a.device = d == "best" ? Device::best() : Device::parse(d);
      if (d != "best") a.device_why = "as asked (--device " + d + ")";
    } else if (k == "--cuda-graphs") {
      a.cuda_graphs = true;
    } else if (k == "--amp") {
      a.amp = value();
      if (a.amp != "bf16" && a.amp != "f16")
        throw Error(str("[args] --amp takes bf16 or f16, not '", a.amp, "'"));
    } else
      throw Error(str("[args] unknown option ", k, " (--help lists them)"));
  }
  return a;
}

// Builds the model, loss, Adam(W) with a cosine schedule, and the signatures.
void build_training_graph(Graph& g, const ModelFn& model, const TrainDefaults& defaults,
                          int64_t total_steps, const std::string& amp) {
  Value x = g.placeholder("images", f32, {-1, 784});
  Value y = g.placeholder("labels", i64, {-1});
  const Logits logits = model(g, x);
  Value loss = mean(softmax_cross_entropy(logits.train, y));
  Value eval_loss = mean(softmax_cross_entropy(logits.eval, y));
  Value predictions = argmax(logits.eval, 1);
  Value correct = sum(cast(equal(predictions, y), f32));
  const optim::AdamOptions options{
      .lr = defaults.lr,
      .weight_decay = defaults.weight_decay,
      .schedule = optim::Schedule::cosine(total_steps, defaults.lr / 200)};
  std::unique_ptr<optim::Adam> adam = defaults.weight_decay > 0
                                          ? std::make_unique<optim::AdamW>(options)
                                          : std::make_unique<optim::Adam>(options);
  Value train_loss = loss;
  if (!amp.empty()) {
    train_loss = autocast(loss, amp == "f16" ? f16 : bf16);
    if (amp == "f16") adam->with_loss_scaling();
  }
  // Two steps, with the data-parallel transform in between: the gradients are averaged over
  // the ranks in buckets while backward goes on (at world size 1 the average is the identity).
  auto dp = distributed::data_parallel(adam->compute_gradients(train_loss));
  Value train = dp.apply(*adam);
  // Outputs carry names (what kiln-run calls its files: probabilities.npy, classes.npy).
  g.add_signature({"train", {x, y}, {train_loss.named("loss")}, {train}});
  g.add_signature({"sync", {}, {}, {distributed::broadcast_variables(g)}});
  g.add_signature({"eval", {x, y}, {eval_loss.named("eval_loss"), correct.named("correct")}, {}});
  g.add_signature({"predict",
                   {x},
                   {softmax(logits.eval).named("probabilities"), predictions.named("classes")},
                   {}});
  // The scheduled learning rate at the current step, for the logs.
  const Value lr = optim::learning_rate(g, options.lr, options.schedule, optim::global_step(g));
  g.add_signature({"learning_rate", {}, {lr.named("learning_rate")}, {}});
}

// The options of a run as a Markdown table, for TensorBoard's Text tab.
std::string options_text(const Args& a, const std::string& name, int64_t world) {
  return str("| option | value |\n|---|---|\n| example | ", name, " |\n| epochs | ", a.epochs,
             " |\n| batch | ", a.batch, " |\n| ranks | ", world, " |\n| device | ", a.device,
             " |\n| amp | ", a.amp.empty() ? "off" : a.amp, " |\n| seed | ", a.seed,
             " |\n| resume | ", a.resume ? "yes" : "no", " |\n| train limit | ", a.train_limit,
             " |\n");
}

// Loss and accuracy over a whole dataset through the "eval" signature.
std::pair<double, double> evaluate(Session& sess, const data::Dataset& set) {
  data::BatchLoader loader(set, 1000, 0, 0, /*shuffle=*/false);
  double loss = 0, correct = 0;
  while (auto batch = loader.next()) {
    auto out = sess.run_signature("eval", {batch->first, batch->second});
    loss += out[0].item<double>() * batch->first.shape()[0];
    correct += out[1].item<double>();
  }
  return {loss / set.size(), correct / set.size()};
}

void progress(int64_t epoch, int64_t epochs, int64_t done, int64_t total, double loss, double rate,
              bool tty) {
  if (!tty && done != total) return;
  if (auto group = distributed::default_group(); group && group->rank() != 0) return;
  constexpr int kWidth = 30;
  int filled = static_cast<int>(kWidth * done / std::max<int64_t>(total, 1));
  std::printf("%sepoch %lld/%lld [%.*s%s%.*s] %lld/%lld  loss %.4f  %.0f samples/s%s",
              tty ? "\r" : "", static_cast<long long>(epoch), static_cast<long long>(epochs),
              filled, "==============================", filled < kWidth ? ">" : "",
              kWidth - filled - (filled < kWidth ? 1 : 0), "                              ",
              static_cast<long long>(done), static_cast<long long>(total), loss, rate,
              tty && done != total ? "" : "\n");
  std::fflush(stdout);
}

}  // namespace

int train_fashion_mnist(int argc, char** argv, const std::string& name, const ModelFn& model,
                        const TrainDefaults& defaults) {
  try {
    Args args = parse(argc, argv, defaults);
    if (args.help) {
      std::printf(
          "%s: trains on Fashion-MNIST, saves the graph and checkpoint, logs for "
          "TensorBoard\n%s",
          name.c_str(), kUsage);
      return 0;
    }
    if (!args.amp.empty() && args.device.is_cpu())
      throw Error(str("[args] --amp ", args.amp,
                      " computes in 16 bits, which needs a GPU; this run would be on the CPU"));
    // One process, or one rank of a launched job: each rank trains on its own shard with
    // batch / world_size examples per step, so the global batch stays --batch.
    auto group = distributed::init();
    const int64_t rank = group->rank(), world = group->world_size();
    if (args.batch % world != 0)
      throw Error(str("[args] the batch ", args.batch, " does not split over ", world, " ranks"));
    const int64_t rank_batch = args.batch / world;
    if (world > 1 && args.device.is_cuda()) args.device = Device::cuda(group->local_rank());
    // Only rank 0 reports (errors still reach stderr from every rank).
    if (rank != 0 && !std::freopen("/dev/null", "w", stdout))
      throw Error("[args] cannot silence the output of other ranks");
    std::filesystem::create_directories(args.out);
    const std::string graph_path = args.out + "/" + name + ".pb";
    const std::string ckpt_path = args.out + "/" + name + ".ckpt";
    // The checkpoints every rank commits together at the end of each epoch (the newest kept):
    // what --resume, and a job restarted after a failure (kiln-launch --max-restarts, torchrun),
    // continue from. ckpt_path is the same state in one file, for kiln-run and other programs.
    const std::string steps_dir = args.out + "/" + name + "_steps";
    const int64_t restart = group->environment().restart_count;
    const bool resume = args.resume || (restart > 0 && std::filesystem::exists(graph_path));
    // A fresh run never continues from the steps of an earlier one.
    if (!resume && rank == 0) std::filesystem::remove_all(steps_dir);

    std::printf("loading Fashion-MNIST from %s\n", args.data.c_str());
    data::Dataset train_set = data::Dataset::from_idx(args.data + "/train-images-idx3-ubyte.gz",
                                                      args.data + "/train-labels-idx1-ubyte.gz");
    data::Dataset test_set = data::Dataset::from_idx(args.data + "/t10k-images-idx3-ubyte.gz",
                                                     args.data + "/t10k-labels-idx1-ubyte.gz");
    // The first `limit` examples only (tests and sanitizer builds use few).
    auto keep_first = [](data::Dataset& set, int64_t limit) {
      if (limit <= 0 || limit >= set.size()) return;
      std::vector<int64_t> first(static_cast<size_t>(limit));
      std::iota(first.begin(), first.end(), 0);
      auto [images, labels] = set.gather(first);
      set = data::Dataset(images, labels);
    };
    keep_first(train_set, args.train_limit);
    keep_first(test_set, args.test_limit);
    std::printf("  %lld training and %lld test images\n", static_cast<long long>(train_set.size()),
                static_cast<long long>(test_set.size()));
    const data::Shard shard{rank, world};
    const int64_t shard_size = (train_set.size() + world - 1) / world;
    const int64_t steps_per_epoch = (shard_size + rank_batch - 1) / rank_batch;

    std::unique_ptr<Graph> graph;
    if (resume) {
      // Only the files: the graph comes from disk, not from build_training_graph.
      graph = load_graph(graph_path);
      std::printf("resuming: the graph from %s\n", graph_path.c_str());
    } else {
      graph = std::make_unique<Graph>();
      build_training_graph(*graph, model, defaults, args.epochs * steps_per_epoch, args.amp);
      if (rank == 0) save_graph(*graph, graph_path);
      std::printf("saved the training graph (%d nodes) to %s\n", graph->num_nodes(),
                  graph_path.c_str());
    }
    Session sess(*graph, {.device = args.device,
                          .intra_op_threads = args.threads,
                          .cuda_graphs = args.cuda_graphs,
                          .trace_path = args.trace});
    std::printf("training on %s%s%s%s\n", args.device.to_string().c_str(),
                args.cuda_graphs ? " (CUDA Graphs)" : "",
                args.amp.empty() ? "" : (" (" + args.amp + " autocast)").c_str(),
                world > 1 ? str(", data-parallel over ", world, " ranks").c_str() : "");
    int64_t first_epoch = 0;
    if (resume) {
      if (restart > 0) std::printf("  restart %lld of the job\n", static_cast<long long>(restart));
      if (auto step = distributed::restore_latest_checkpoint(sess, steps_dir)) {
        std::printf("  the checkpoint of step %lld in %s\n", static_cast<long long>(*step),
                    steps_dir.c_str());
      } else if (args.resume) {
        sess.restore_checkpoint(ckpt_path);  // a run of a build without the steps folder
        std::printf("  the checkpoint %s\n", ckpt_path.c_str());
      }
      int64_t step = sess.variable_value(graph->value("global_step")).item<int64_t>();
      first_epoch = step / steps_per_epoch;
      std::printf("  at step %lld (epoch %lld)\n", static_cast<long long>(step),
                  static_cast<long long>(first_epoch));
    }
    // Every rank starts from rank 0's variables.
    if (world > 1) sess.run_signature("sync", {});
    // TensorBoard: rank 0 logs the options, the graph, and the curves as it trains.
    std::unique_ptr<SummaryWriter> log;
    if (rank == 0) {
      log = std::make_unique<SummaryWriter>(args.logdir.empty() ? args.out + "/logs" : args.logdir);
      log->add_text("run/options", options_text(args, name, world), 0);
      log->add_graph(*graph);
    }
    const bool logs_lr = graph->signatures().count("learning_rate") > 0;  // older files lack it

    const bool tty = isatty(fileno(stdout));
    for (int64_t epoch = first_epoch; epoch < args.epochs; ++epoch) {
      data::BatchLoader loader(train_set, rank_batch, args.seed, epoch, true, false, shard);
      auto start = std::chrono::steady_clock::now();
      double running = 0;
      int64_t done = 0, samples = 0;
      while (auto batch = loader.next()) {
        double loss = sess.run_signature("train", {batch->first, batch->second})[0].item<double>();
        running = done == 0 ? loss : 0.95 * running + 0.05 * loss;
        samples += batch->first.shape()[0] * world;  // every rank trains alike
        ++done;
        const int64_t step = epoch * steps_per_epoch + done;
        if (log && (done % 20 == 0 || done == loader.num_batches())) {
          log->add_scalar("train/loss", loss, step);
          if (logs_lr)
            log->add_scalar("train/learning_rate",
                            sess.run_signature("learning_rate", {})[0].item<double>(), step);
        }
        double seconds =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        if (done % 20 == 0 || done == loader.num_batches())
          progress(epoch + 1, args.epochs, done, loader.num_batches(), running, samples / seconds,
                   tty);
      }
      auto [test_loss, test_accuracy] = evaluate(sess, test_set);
      distributed::save_checkpoint(sess, steps_dir, (epoch + 1) * steps_per_epoch, {.keep = 1});
      if (rank == 0) sess.save_checkpoint(ckpt_path);
      if (log) {
        log->add_scalar("test/loss", test_loss, (epoch + 1) * steps_per_epoch);
        log->add_scalar("test/accuracy", test_accuracy, (epoch + 1) * steps_per_epoch);
      }
      std::printf("  test loss %.4f  test accuracy %.4f  (checkpoint saved)\n", test_loss,
                  test_accuracy);
      std::fflush(stdout);  // seen at once when the output goes to a pipe or a log file
      if (epoch + 1 == args.stop_after) {
        std::printf("stopping after epoch %lld as asked; continue with --resume\n",
                    static_cast<long long>(epoch + 1));
        return 0;
      }
    }
    auto [test_loss, test_accuracy] = evaluate(sess, test_set);
    if (args.device_why.empty())
      args.device_why = args.device.is_cuda() ? "the first usable GPU (--device cpu to use the CPU)"
                                              : "no usable GPU here: " + cuda_availability().reason;
    std::printf("saved graph %s and checkpoint %s; TensorBoard logs in %s\n", graph_path.c_str(),
                ckpt_path.c_str(),
                (args.logdir.empty() ? args.out + "/logs" : args.logdir).c_str());
    std::printf("trained on %s: %s\n", args.device.to_string().c_str(), args.device_why.c_str());
    std::printf("test_loss: %.4f\ntest_accuracy: %.4f\n", test_loss, test_accuracy);
    return 0;
  } catch (const std::exception& e) {
    std::fflush(stdout);  // the progress so far first, then the error
    std::fprintf(stderr, "%s: %s\n", name.c_str(), e.what());
    return 1;
  }
}

}  // namespace kiln::examples
