# Third-party libraries from Debian's packages (tools/kiln-dev installs them when missing).
find_package(Threads REQUIRED)
find_package(Protobuf REQUIRED)
find_package(ZLIB REQUIRED)  # gzip-compressed datasets

# CPU matmul goes through OpenBLAS's cblas (DESIGN.md: faster than oneDNN on our machines).
find_path(KILN_CBLAS_INCLUDE_DIR cblas.h
  PATHS /usr/include/${CMAKE_LIBRARY_ARCHITECTURE}
  PATH_SUFFIXES openblas-pthread openblas
  REQUIRED)
find_library(KILN_BLAS_LIBRARY NAMES openblas REQUIRED)
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
