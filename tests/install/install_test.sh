#!/bin/sh
# Installs the build into a fresh prefix and uses it as another project would:
#   1. the layout: libkiln with its SONAME, headers under include/kiln, tools, CMake and
#      pkg-config files;
#   2. every installed header compiles on its own with only the prefix on the include path;
#   3. examples/ copied outside the tree builds with find_package(Kiln) alone, and runs;
#   4. a program builds with pkg-config's flags alone, and runs;
#   5. the installed tools run from the prefix.
# Usage: install_test.sh BUILD_DIR SOURCE_DIR WORK_DIR
set -eu
build=$1 source=$2 work=$3
rm -rf "$work"
mkdir -p "$work"
prefix=$work/prefix
fail() { echo "install_test: $*" >&2; exit 1; }

cmake --install "$build" --prefix "$prefix" >"$work/install.log" || { cat "$work/install.log"; fail "cmake --install failed"; }

# 1. Layout.
lib=$(find "$prefix" -name 'libkiln.so.*.*.*' | head -n 1)
[ -n "$lib" ] || fail "no versioned libkiln.so.X.Y.Z under $prefix"
libdir=$(dirname "$lib")
soname=$(objdump -p "$lib" | awk '$1 == "SONAME" { print $2 }')
case $soname in libkiln.so.[0-9]*) ;; *) fail "libkiln has SONAME '$soname'";; esac
[ -e "$libdir/$soname" ] || fail "no $soname link beside $lib"
[ -e "$libdir/libkiln.so" ] || fail "no libkiln.so development link"
for f in include/kiln/kiln.h include/kiln/framework/graph.h include/kiln/runtime/session.h \
         bin/kiln-graph bin/kiln-run bin/kiln-launch; do
  [ -e "$prefix/$f" ] || fail "missing $prefix/$f"
done
config=$(find "$prefix" -name KilnConfig.cmake | head -n 1)
[ -n "$config" ] && [ -e "$(dirname "$config")/KilnConfigVersion.cmake" ] || fail "no KilnConfig.cmake + KilnConfigVersion.cmake"
[ -e "$libdir/pkgconfig/kiln.pc" ] || fail "no $libdir/pkgconfig/kiln.pc"
if grep -rlE '#include <(cuda|cudnn|cublas|nccl|oneapi|cblas|gloo|google)' "$prefix/include/kiln"; then
  fail "installed headers above include third-party headers"
fi

# 2. Every installed header on its own, with only the prefix on the include path.
cxx=${CXX:-c++}
find "$prefix/include/kiln" -name '*.h' | sed "s|^$prefix/include/||" >"$work/headers"
count=$(wc -l <"$work/headers")
xargs -P 2 -I{} sh -c "printf '#include <{}>\n' | $cxx -std=c++20 -fsyntax-only -Wall -Wextra -Werror -I'$prefix/include' -x c++ - 2>'$work/header.log' || { cat '$work/header.log'; echo 'not self-contained: {}'; exit 255; }" <"$work/headers" ||
  fail "an installed header does not compile on its own"
echo "install_test: $count installed headers each compile alone"

# 3. The examples, outside the tree, with find_package(Kiln) only.
cp -r "$source/examples" "$work/examples"
cmake -S "$work/examples" -B "$work/examples/build" -DCMAKE_PREFIX_PATH="$prefix" \
  -DCMAKE_BUILD_TYPE=Release >"$work/configure.log" 2>&1 || { cat "$work/configure.log"; fail "find_package(Kiln) configure failed"; }
cmake --build "$work/examples/build" -j 2 >"$work/build.log" 2>&1 || { cat "$work/build.log"; fail "examples did not build against the installed Kiln"; }
(cd "$work" && "$work/examples/build/quickstart" "$work/quickstart.pb") || fail "quickstart failed"
if [ -d /usr/share/datasets/fashion-mnist ]; then
  "$work/examples/build/fashion_mnist_cnn" --epochs 1 --train-limit 640 --test-limit 500 --device cpu \
    --out "$work/cnn" >"$work/cnn.log" 2>&1 && grep -q test_accuracy "$work/cnn.log" ||
    { cat "$work/cnn.log"; fail "fashion_mnist_cnn (installed Kiln) failed"; }
fi

# 4. pkg-config alone.
PKG_CONFIG_PATH=$libdir/pkgconfig
export PKG_CONFIG_PATH
flags=$(pkg-config --cflags --libs kiln) || fail "pkg-config does not know kiln"
# shellcheck disable=SC2086
$cxx "$source/examples/quickstart.cc" $flags -o "$work/quickstart_pc" || fail "pkg-config build failed"
(cd "$work" && ./quickstart_pc "$work/quickstart_pc.pb") || fail "pkg-config quickstart failed"

# 5. The installed tools.
"$prefix/bin/kiln-graph" "$work/quickstart.pb" >"$work/graph.txt" || fail "installed kiln-graph failed"
grep -q predict "$work/graph.txt" || fail "installed kiln-graph did not describe the graph"
echo "install_test: installed, found by CMake and pkg-config, examples built and ran"
