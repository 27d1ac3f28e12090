#!/usr/bin/env bash
# Builds the `cuda` cfpipe binary (and the GPU test binary) on a machine WITHOUT a GPU or a CUDA
# install, for a GPU machine without a Rust toolchain (issue 6, docs/gpu.md).
#
# Why each piece exists:
# - nvcc, the CUDA headers, cuBLAS, cuRAND and NVRTC come from NVIDIA's PyPI wheels, pinned to the
#   CUDA 13.0 line: the GPU machine's driver is 580 (CUDA 13.0) and its PyTorch (cu130) ships the
#   same sonames (libcublas.so.13, libnvrtc.so.13, libcurand.so.10), which the binary loads there.
# - dfdx's build script asks `nvidia-smi` for the compute capability before it compiles its
#   kernels to PTX with nvcc; a stand-in answers with $CUDA_COMPUTE_CAP (9.0: H100/H200).
# - libcuda.so (the driver) is needed only to link: a stub exporting every `cu*` function that
#   cudarc 0.9 declares, with the soname of the real driver (libcuda.so.1), which the GPU
#   machine provides at run time.
# - dfdx compiles a few kernels with NVRTC at run time and bakes the CUDA include directory into
#   the binary, so the toolkit is reached through the fixed path $CUDA_LINK (default
#   /usr/local/cuda). On the GPU machine, scripts/gpu_run.sh makes that path point at its own
#   toolkit.
#
# Output: target/cuda/release/cfpipe and gpu-bundle/ (binary + GPU test binary + run script),
# small enough to carry to the GPU machine.
#
# Usage: scripts/build_cuda.sh            (env: CUDA_COMPUTE_CAP=90, CUDA_TOOLKIT=.cuda-toolkit)
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

cap=${CUDA_COMPUTE_CAP:-90}
toolkit=${CUDA_TOOLKIT:-$repo/.cuda-toolkit}
link=${CUDA_LINK:-/usr/local/cuda}
wheels=(
  nvidia-cuda-nvcc==13.0.88
  nvidia-cuda-crt==13.0.88
  nvidia-nvvm==13.0.88
  nvidia-cuda-cccl==13.0.85
  nvidia-cuda-runtime==13.0.96
  nvidia-cuda-nvrtc==13.0.88
  nvidia-cublas==13.0.2.14
  nvidia-curand==10.4.0.35
)

# 1. The toolkit, from wheels, merged into one CUDA root (bin/ include/ lib/ nvvm/).
if [ ! -f "$toolkit/.complete" ]; then
  rm -rf "$toolkit" && mkdir -p "$toolkit/wheels" "$toolkit/root"
  python3 -m pip download --quiet --no-deps --only-binary=:all: \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --python-version 3.11 -d "$toolkit/wheels" "${wheels[@]}"
  for w in "$toolkit"/wheels/*.whl; do
    python3 - "$w" "$toolkit/root" <<'PY'
import sys, zipfile, os, shutil
whl, root = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(whl) as z:
    for info in z.infolist():
        parts = info.filename.split("/")
        # nvidia/<component>/{bin,include,lib,nvvm}/... → root/{bin,include,lib,nvvm}/...
        if len(parts) < 4 or parts[0] != "nvidia" or info.is_dir():
            continue
        rel = parts[2:]
        if rel[0] == "lib64":
            rel[0] = "lib"
        dest = os.path.join(root, *rel)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        with z.open(info) as src, open(dest, "wb") as out:
            shutil.copyfileobj(src, out)
        mode = (info.external_attr >> 16) & 0o777
        os.chmod(dest, mode if mode else 0o644)
PY
  done
  chmod +x "$toolkit"/root/bin/* "$toolkit"/root/nvvm/bin/* 2>/dev/null || true
  touch "$toolkit/.complete"
fi
root="$toolkit/root"

# 2. Unversioned names for the linker (the wheels ship only the sonames).
for lib in cublas cublasLt nvrtc curand; do
  so=$(ls "$root"/lib/lib$lib.so.* 2>/dev/null | sort | head -1)
  [ -n "$so" ] || { echo "missing lib$lib in $root/lib" >&2; exit 1; }
  ln -sf "$(basename "$so")" "$root/lib/lib$lib.so"
done

# 3. The driver stub: every cu* function cudarc declares, answering CUDA_ERROR_NO_DEVICE (100),
#    so the binary run against the stub reports "no CUDA device" instead of crashing.
cudarc=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.9.* 2>/dev/null | sort | tail -1)
if [ -z "$cudarc" ]; then
  cargo fetch --quiet
  cudarc=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.9.* | sort | tail -1)
fi
stubs="$toolkit/stubs"
mkdir -p "$stubs"
{
  echo 'int cuGetErrorString(int e, const char **s) { *s = "no CUDA device (driver stub)"; return 0; }'
  echo 'int cuGetErrorName(int e, const char **s) { *s = "CUDA_ERROR_NO_DEVICE"; return 0; }'
  grep -hoE 'pub fn cu[A-Za-z0-9_]+' "$cudarc/src/driver/sys.rs" | awk '{print $3}' | sort -u |
    grep -vE '^cuGetError(String|Name)$' | sed 's/.*/int &(void) { return 100; }/'
} >"$stubs/libcuda.c"
gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$stubs/libcuda.so" "$stubs/libcuda.c"
echo "driver stub: $(wc -l <"$stubs/libcuda.c") functions"

# 4. nvidia-smi stand-in for dfdx's build script.
cat >"$stubs/nvidia-smi" <<EOF
#!/bin/sh
echo compute_cap
echo "${cap:0:1}.${cap:1}"
EOF
chmod +x "$stubs/nvidia-smi"

# 5. The fixed toolkit path baked into the binary.
if [ "$(readlink -f "$link" 2>/dev/null)" != "$(readlink -f "$root")" ]; then
  if [ -e "$link" ] && [ ! -L "$link" ]; then
    echo "$link exists and is not a link to $root; set CUDA_LINK to another path" >&2
    exit 1
  fi
  ln -sfn "$root" "$link"
fi

# 6. Build. The target dir is separate so the CPU build's artifacts stay untouched.
export PATH="$stubs:$root/bin:$PATH"
export CUDA_ROOT="$link" CUDA_COMPUTE_CAP="$cap"
export LIBRARY_PATH="$stubs:$root/lib${LIBRARY_PATH:+:$LIBRARY_PATH}"
export RUSTFLAGS="${RUSTFLAGS:-} -L native=$stubs -L native=$root/lib"
nvcc --version | tail -2
cargo build --release --features cuda --target-dir target/cuda --bin cfpipe
# The test binaries by target name: `gpu` (CPU vs GPU on a whole pipeline) and `conv_ops` (every
# op against its reference, on the GPU through `NAME::cuda`).
test_bin() {
  cargo test --release --features cuda --target-dir target/cuda --test "$1" --no-run \
    --message-format=json 2>/dev/null |
    python3 -c 'import sys, json
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == sys.argv[1]:
        print(m["executable"])' "$1"
}
tests=$(test_bin gpu)
ops=$(test_bin conv_ops)

rm -rf gpu-bundle && mkdir -p gpu-bundle
cp target/cuda/release/cfpipe gpu-bundle/cfpipe
cp "$tests" gpu-bundle/gpu-test
cp "$ops" gpu-bundle/conv-ops-test
cp scripts/gpu_run.sh gpu-bundle/
strip gpu-bundle/cfpipe gpu-bundle/gpu-test gpu-bundle/conv-ops-test 2>/dev/null || true
echo "libraries the binary needs:"
readelf -d gpu-bundle/cfpipe | grep NEEDED
du -sh gpu-bundle
echo "built: gpu-bundle/ (carry it with the repo; run scripts/gpu_run.sh there)"
