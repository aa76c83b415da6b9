# `cmake --install build --prefix P`: the library, its public headers, the tools, and the files
# another project finds Kiln by (find_package(Kiln) or pkg-config kiln).
#   P/lib/libkiln.so.<version>          with SONAME libkiln.so.<major>.<minor>
#   P/include/kiln/...                   kiln.h and the module headers, included as <kiln/...>
#   P/bin/kiln-graph, kiln-run, kiln-launch
#   P/lib/cmake/Kiln/KilnConfig.cmake    Kiln::kiln (C++20, include dirs, Threads)
#   P/lib/pkgconfig/kiln.pc
include(CMakePackageConfigHelpers)

set(KILN_INSTALL_CMAKEDIR ${CMAKE_INSTALL_LIBDIR}/cmake/Kiln)

install(TARGETS kiln EXPORT KilnTargets
        LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR} COMPONENT runtime
                NAMELINK_COMPONENT development)

# The tools find libkiln beside them (../lib) wherever the prefix is moved.
set_target_properties(kiln-graph kiln-run kiln-launch PROPERTIES
  INSTALL_RPATH "$ORIGIN/../${CMAKE_INSTALL_LIBDIR}" INSTALL_RPATH_USE_LINK_PATH ON)
install(TARGETS kiln-graph kiln-run kiln-launch RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR}
        COMPONENT runtime)

# Every header of the modules, except those that include a third-party library's headers
# (CUDA, cuDNN, oneDNN, BLAS, or blas.h through blocked_product.h): a program using Kiln never
# needs those installed to compile.
install(FILES kiln.h DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/kiln COMPONENT development)
foreach(module framework ops autograd runtime distributed)
  install(DIRECTORY ${module} DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/kiln
          COMPONENT development
          FILES_MATCHING PATTERN "*.h"
          PATTERN "cuda" EXCLUDE
          PATTERN "blas.h" EXCLUDE
          PATTERN "blocked_product.h" EXCLUDE)
endforeach()

install(EXPORT KilnTargets NAMESPACE Kiln:: DESTINATION ${KILN_INSTALL_CMAKEDIR}
        COMPONENT development)
configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/KilnConfig.cmake.in
  ${PROJECT_BINARY_DIR}/KilnConfig.cmake INSTALL_DESTINATION ${KILN_INSTALL_CMAKEDIR})
# Before 1.0 a minor version may break the API, so only the same major.minor is compatible.
write_basic_package_version_file(${PROJECT_BINARY_DIR}/KilnConfigVersion.cmake
  VERSION ${PROJECT_VERSION} COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/KilnConfig.cmake ${PROJECT_BINARY_DIR}/KilnConfigVersion.cmake
        DESTINATION ${KILN_INSTALL_CMAKEDIR} COMPONENT development)

file(RELATIVE_PATH KILN_PC_TO_PREFIX /${CMAKE_INSTALL_LIBDIR}/pkgconfig /)
string(REGEX REPLACE "/$" "" KILN_PC_TO_PREFIX "${KILN_PC_TO_PREFIX}")
configure_file(${PROJECT_SOURCE_DIR}/cmake/kiln.pc.in ${PROJECT_BINARY_DIR}/kiln.pc @ONLY)
install(FILES ${PROJECT_BINARY_DIR}/kiln.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig
        COMPONENT development)

# `cpack -G DEB` in the build directory: one Debian package with everything above.
set(CPACK_PACKAGE_NAME kiln)
set(CPACK_PACKAGE_VENDOR "Kiln developers")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "Kiln: a C++ deep learning framework (graphs, autograd, CPU and CUDA runtime)")
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_DEBIAN_PACKAGE_MAINTAINER "Kiln developers")
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
# The shared libraries libkiln needs (protobuf, oneDNN, OpenBLAS, zlib), found by dpkg-shlibdeps.
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_PACKAGE_SECTION libdevel)
include(CPack)
