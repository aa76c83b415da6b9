// OpenBLAS sgemm (threaded build) called directly on 1024^3: the reference the matmul case
// compares Kiln with. Prints "sgemm <seconds> gflops=<GFLOP/s>".
#include <cblas.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

int main(int argc, char** argv) {
  const int threads = argc > 1 ? std::atoi(argv[1]) : 2;
  openblas_set_num_threads(threads);
  const int n = 1024;
  std::vector<float> a(n * n, 0.5f), b(n * n, 0.25f), c(n * n);
  std::vector<double> times;
  for (int rep = 0; rep < 23; ++rep) {
    auto start = std::chrono::steady_clock::now();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a.data(), n, b.data(), n,
                0.0f, c.data(), n);
    double t = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (rep >= 3) times.push_back(t);
  }
  std::sort(times.begin(), times.end());
  const double t = times[times.size() / 2];
  std::printf("sgemm %.9f gflops=%.1f\n", t, 2.0 * n * n * n / t / 1e9);
  return 0;
}
