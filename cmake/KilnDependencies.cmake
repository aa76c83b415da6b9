# Third-party libraries from Debian's packages (tools/kiln-dev installs them when missing).
find_package(Threads REQUIRED)
find_package(Protobuf REQUIRED)
find_package(ZLIB REQUIRED)  # gzip-compressed datasets

# CPU matmul goes through OpenBLAS's cblas (DESIGN.md: faster than oneDNN on our machines). Kiln
# splits each product over its own thread pool and asks OpenBLAS for one thread per call, so no
# BLAS threads compete with Kiln's. It must be the pthread build: only it guards its packing
# buffers for concurrent callers (Debian's serial build does not; concurrent calls from Kiln's
# pool corrupted results, and ThreadSanitizer saw it).
find_path(KILN_OPENBLAS_INCLUDE_DIR cblas.h
  PATHS /usr/include/${CMAKE_LIBRARY_ARCHITECTURE}/openblas-pthread NO_DEFAULT_PATH REQUIRED)
find_library(KILN_OPENBLAS_LIBRARY NAMES openblas
  PATHS /usr/lib/${CMAKE_LIBRARY_ARCHITECTURE}/openblas-pthread NO_DEFAULT_PATH REQUIRED)
set(KILN_BLAS_THREADED_LIBRARY ${KILN_OPENBLAS_LIBRARY})  # also what sgemm_reference times
add_library(kiln_blas INTERFACE)
target_include_directories(kiln_blas SYSTEM INTERFACE ${KILN_OPENBLAS_INCLUDE_DIR})
target_link_libraries(kiln_blas INTERFACE ${KILN_OPENBLAS_LIBRARY})

if(KILN_BUILD_TESTS)
  find_package(GTest REQUIRED)
  include(GoogleTest)
endif()

find_program(KILN_CCACHE ccache)
if(KILN_CCACHE)
  set(CMAKE_CXX_COMPILER_LAUNCHER ${KILN_CCACHE})
  set(CMAKE_CUDA_COMPILER_LAUNCHER ${KILN_CCACHE})
endif()
