#!/bin/sh
# The README's training program, exactly as printed there (the ```cpp block after
# "## Training"), compiled against the build and run (with 1 epoch instead of 5, to be quick).
# Usage: readme_snippet.sh README BUILD_DIR WORK_DIR
set -eu
readme=$1 build=$2 work=$3
rm -rf "$work"
mkdir -p "$work"
awk '/^## Training/ { on = 1 } on && /^```cpp/ { grab = 1; next } grab && /^```/ { exit } grab { print }' \
  "$readme" >"$work/train.cc"
grep -q "int main" "$work/train.cc" || { echo "no complete program under ## Training"; exit 1; }
sed -i 's/epoch < 5;/epoch < 1;/' "$work/train.cc"
${CXX:-c++} -std=c++20 -O1 -Wall -Wextra -Werror -I"$build/include" "$work/train.cc" \
  -L"$build" -lkiln -Wl,-rpath,"$build" -o "$work/train"
cd "$work" && ./train && test -s model.pb && test -s model.ckpt
echo "readme_snippet: the README's training program built, trained and saved"
