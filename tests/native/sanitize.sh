#!/usr/bin/env bash
# The native core under AddressSanitizer and UndefinedBehaviorSanitizer (gcc or clang):
#  1. a C driver plays 3,000 frames with pseudo-random buttons, drawing some, saving and
#     loading snapshots and feeding the loader corrupted and truncated ones;
#  2. the Python extension, built with the sanitizers, runs tests/native/exercise.py.
# Any sanitizer report fails the script. Usage: bash tests/native/sanitize.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
core="$root/src/mario_rl/envs/nes"
cc=${CC:-gcc}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
rom=$(cd "$root" && uv run python -c "from mario_rl.envs.emulator import rom_path; print(rom_path())")
flags=(-g -O1 -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all -std=c11 -Wall -Wextra -Werror)

"$cc" "${flags[@]}" -I"$core" "$core/nes.c" "$here/driver.c" -o "$out/driver"
ASAN_OPTIONS=detect_leaks=1 "$out/driver" "$rom" 3000 3

# The binding too: the extension built with the sanitizers, loaded by Python with the ASan
# runtime preloaded (Python itself is not instrumented, so leak checks stay off).
pyinc=$(cd "$root" && uv run python -c "import sysconfig; print(sysconfig.get_paths()['include'])")
suffix=$(cd "$root" && uv run python -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))")
mkdir -p "$out/pkg"
"$cc" "${flags[@]}" -shared -fPIC -I"$core" -I"$pyinc" "$core/nes.c" "$core/module.c" \
    -lpthread -o "$out/pkg/_core$suffix"
runtime=$("$cc" -print-file-name=libasan.so)
(cd "$root" && LD_PRELOAD="$runtime" ASAN_OPTIONS=detect_leaks=0 MARIO_RL_CORE="$out/pkg" \
    uv run python "$here/exercise.py")
echo "sanitizers: clean"
