# Third-party libraries from Debian's packages (tools/kiln-dev installs them when missing).
find_package(Threads REQUIRED)
find_package(Protobuf REQUIRED)
find_package(ZLIB REQUIRED)  # gzip-compressed datasets

# CPU products: f32 through oneDNN's sgemm (ops/math/blas.h says why), f64 through OpenBLAS's
# cblas. Kiln splits each product over its own thread pool and asks both for one thread per
# call, so no library threads compete with Kiln's. OpenBLAS must be the pthread build: only it
# guards its packing buffers for concurrent callers (Debian's serial build does not; concurrent
# calls from Kiln's pool corrupted results, and ThreadSanitizer saw it).
find_path(KILN_OPENBLAS_INCLUDE_DIR cblas.h
  PATHS /usr/include/${CMAKE_LIBRARY_ARCHITECTURE}/openblas-pthread NO_DEFAULT_PATH REQUIRED)
find_library(KILN_OPENBLAS_LIBRARY NAMES openblas
  PATHS /usr/lib/${CMAKE_LIBRARY_ARCHITECTURE}/openblas-pthread NO_DEFAULT_PATH REQUIRED)
set(KILN_BLAS_THREADED_LIBRARY ${KILN_OPENBLAS_LIBRARY})  # also what sgemm_reference times
add_library(kiln_blas INTERFACE)
target_include_directories(kiln_blas SYSTEM INTERFACE ${KILN_OPENBLAS_INCLUDE_DIR})
find_path(KILN_DNNL_INCLUDE_DIR oneapi/dnnl/dnnl.h REQUIRED)
find_library(KILN_DNNL_LIBRARY NAMES dnnl REQUIRED)
# oneDNN's CPU runtime is GNU OpenMP; Kiln calls its omp_set_num_threads, and links it by name
# (not -fopenmp, which under clang would bring LLVM's runtime beside GNU's).
find_library(KILN_GOMP_LIBRARY NAMES libgomp.so.1 gomp REQUIRED)
target_include_directories(kiln_blas SYSTEM INTERFACE ${KILN_DNNL_INCLUDE_DIR})
target_link_libraries(kiln_blas INTERFACE ${KILN_OPENBLAS_LIBRARY} ${KILN_DNNL_LIBRARY}
  ${KILN_GOMP_LIBRARY})

if(KILN_BUILD_TESTS)
  find_package(GTest REQUIRED)
  include(GoogleTest)
endif()

find_program(KILN_CCACHE ccache)
if(KILN_CCACHE)
  set(CMAKE_CXX_COMPILER_LAUNCHER ${KILN_CCACHE})
  set(CMAKE_CUDA_COMPILER_LAUNCHER ${KILN_CCACHE})
endif()
