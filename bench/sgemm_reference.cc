// The libraries' own threaded sgemm called directly on 1024^3: OpenBLAS (pthread build) and
// oneDNN (OpenMP), the references the matmul case compares Kiln with. Prints
// "sgemm <seconds of the faster> gflops=<its GFLOP/s> openblas=<GFLOP/s> onednn=<GFLOP/s>".
#include <cblas.h>
#include <oneapi/dnnl/dnnl.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <vector>

extern "C" void omp_set_num_threads(int threads);  // GNU OpenMP, oneDNN's runtime

namespace {

// Median seconds of 20 runs after 3 warm-ups.
double median_seconds(const std::function<void()>& product) {
  std::vector<double> times;
  for (int rep = 0; rep < 23; ++rep) {
    auto start = std::chrono::steady_clock::now();
    product();
    double t = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (rep >= 3) times.push_back(t);
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  const int threads = argc > 1 ? std::atoi(argv[1]) : 2;
  openblas_set_num_threads(threads);
  omp_set_num_threads(threads);
  const int n = 1024;
  std::vector<float> a(n * n, 0.5f), b(n * n, 0.25f), c(n * n);
  const double openblas = median_seconds([&] {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a.data(), n, b.data(), n,
                0.0f, c.data(), n);
  });
  const double onednn = median_seconds(
      [&] { dnnl_sgemm('N', 'N', n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, c.data(), n); });
  const double flop = 2.0 * n * n * n;
  const double t = std::min(openblas, onednn);
  std::printf("sgemm %.9f gflops=%.1f openblas=%.1f onednn=%.1f\n", t, flop / t / 1e9,
              flop / openblas / 1e9, flop / onednn / 1e9);
  return 0;
}
