#!/usr/bin/env bash
# Runs on the GPU machine (no Rust there), from the repo root, with gpu-bundle/ carried along
# (built by scripts/build_cuda.sh). Checks the device, runs the GPU-vs-CPU test and the
# mnist_split pipeline on both devices, and writes what it saw under ${OUT:-gpu-out}.
set -uo pipefail
out=${OUT:-gpu-out}
mkdir -p "$out"
exec > >(tee "$out/gpu_run.log") 2>&1

# The CUDA libraries the binary links (cuBLAS, NVRTC, cuRAND) come from PyTorch's NVIDIA wheels.
libs=$(python3 - <<'PY'
import glob, os, site
dirs = set()
for sp in site.getsitepackages():
    for so in glob.glob(os.path.join(sp, "nvidia", "**", "lib", "lib*.so*"), recursive=True):
        dirs.add(os.path.dirname(so))
print(":".join(sorted(dirs)))
PY
)
export LD_LIBRARY_PATH="$libs:/usr/local/nvidia/lib64:/usr/local/nvidia/lib:${LD_LIBRARY_PATH:-}"

# dfdx compiles some kernels with NVRTC and looks for headers at the path baked in at build
# time (/usr/local/cuda/include); point it at this machine's toolkit if it lives elsewhere.
if [ ! -f /usr/local/cuda/include/cuda.h ]; then
  inc=$(dirname "$(find / -name cuda.h -path '*include*' 2>/dev/null | head -1)")
  [ -n "$inc" ] && mkdir -p /usr/local/cuda && ln -sfn "$inc" /usr/local/cuda/include
fi

nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total --format=csv
echo "== ldd"; ldd gpu-bundle/cfpipe | grep -E "cuda|cublas|nvrtc|curand|not found"
echo "== device check"; gpu-bundle/cfpipe run pipelines/mnist_split.yaml --device cuda --set 'seeds=[0]' --set training.epochs=1 --cache "$out/probe-cache" --quiet; echo "rc=$?"
echo "== GPU test (CPU vs GPU on the fixture pipeline)"
CFPIPE_BIN=$(pwd)/gpu-bundle/cfpipe gpu-bundle/gpu-test --ignored --nocapture; echo "rc=$?"
echo "== op tests on the GPU (conv, pools, flatten, dropout against their references)"
gpu-bundle/conv-ops-test cuda --ignored; echo "rc=$?"
echo "== mnist_split, seed 0, CPU and GPU"
for dev in cpu cuda; do
  /usr/bin/time -v gpu-bundle/cfpipe run pipelines/mnist_split.yaml --set 'seeds=[0]' \
    --device $dev --cache "$out/cache-$dev" --quiet 2>"$out/time-$dev.txt"; echo "rc=$?"
  grep -E "Elapsed|Maximum resident" "$out/time-$dev.txt"
  gpu-bundle/cfpipe show pipelines/mnist_split.yaml --set 'seeds=[0]' --cache "$out/cache-$dev" --json >"$out/show-$dev.json"
  gpu-bundle/cfpipe show pipelines/mnist_split.yaml --set 'seeds=[0]' --cache "$out/cache-$dev"
done
