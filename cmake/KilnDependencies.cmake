# Third-party libraries from Debian's packages (tools/kiln-dev installs them when missing).
find_package(Threads REQUIRED)
find_package(Protobuf REQUIRED)
find_package(ZLIB REQUIRED)  # gzip-compressed datasets

# CPU matmul goes through OpenBLAS's cblas (DESIGN.md: faster than oneDNN on our machines), in
# its single-threaded build: Kiln splits a product over its own thread pool, so no BLAS threads
# spin beside Kiln's (the pthread build's idle workers busy-wait and steal the cores).
find_path(KILN_CBLAS_INCLUDE_DIR cblas.h
  PATHS /usr/include/${CMAKE_LIBRARY_ARCHITECTURE}/openblas-serial NO_DEFAULT_PATH REQUIRED)
find_library(KILN_BLAS_LIBRARY NAMES openblas
  PATHS /usr/lib/${CMAKE_LIBRARY_ARCHITECTURE}/openblas-serial NO_DEFAULT_PATH REQUIRED)
# The threaded build, only for the benchmark that times OpenBLAS called directly.
find_library(KILN_BLAS_THREADED_LIBRARY NAMES openblas
  PATHS /usr/lib/${CMAKE_LIBRARY_ARCHITECTURE}/openblas-pthread NO_DEFAULT_PATH)
add_library(kiln_blas INTERFACE)
target_include_directories(kiln_blas SYSTEM INTERFACE ${KILN_CBLAS_INCLUDE_DIR})
target_link_libraries(kiln_blas INTERFACE ${KILN_BLAS_LIBRARY})

if(KILN_BUILD_TESTS)
  find_package(GTest REQUIRED)
  include(GoogleTest)
endif()

find_program(KILN_CCACHE ccache)
if(KILN_CCACHE)
  set(CMAKE_CXX_COMPILER_LAUNCHER ${KILN_CCACHE})
  set(CMAKE_CUDA_COMPILER_LAUNCHER ${KILN_CCACHE})
endif()
