#!/usr/bin/env bash
# GPU benchmark of the tensor runtime for a Linux machine with an NVIDIA GPU and no network.
#
# It runs, in one short invocation: the adapter report (shader-f16, subgroups, cooperative
# matrix, limits), `bench kernels` on the GPU through wgpu/Vulkan, the CPU backend, and the
# PyTorch baseline (training/bench_torch.py) on the same GPU (cuda) at the same shapes; then the
# parity tests (tests/tensor_ops.rs: every WGSL kernel against the f64 references) on that GPU.
#
# Two steps, because the GPU machine has no network:
#   1. On a machine with network and the same OS family (here):  benches/gpu.sh --prepare
#      builds the benchmark, the doctor and the tensor_ops test binary, and copies them with
#      the Vulkan loader (libvulkan.so.1 from the `libvulkan1` package) into target/gpu-bundle/.
#      Carry target/gpu-bundle/ (~15 MiB) with the repository to the GPU machine.
#   2. On the GPU machine:  benches/gpu.sh [--quick] [--python PYTHON]
#      It needs the NVIDIA driver (which ships the Vulkan ICD, libGLX_nvidia.so.0) and, for the
#      baseline, a Python with torch (training/requirements-bench.txt); without torch it runs the
#      wgpu part and says the baseline is missing.
#
# wgpu needs the Vulkan loader and an ICD manifest for the NVIDIA driver. The loader comes from
# the bundle when the system has none; the manifest is written to a temporary folder when the
# driver did not install one (containers often mount the driver's libraries but not its JSON).
# A manifest named by VK_DRIVER_FILES (or VK_ICD_FILENAMES) beforehand is kept. The driver's
# Vulkan library (libGLX_nvidia.so.0) is a glvnd vendor library: where glvnd is missing, unpack the
# `libglvnd0` package too (docs/kernels.md, "GPU figures", shows how it ran on an H200).
set -euo pipefail
cd "$(dirname "$0")/.."
BUNDLE=target/gpu-bundle

# The path of the first library matching a pattern in the linker cache, or nothing. Reads all of
# ldconfig's output (no early exit), so that pipefail never sees a SIGPIPE.
first_lib() {
  (ldconfig -p 2>/dev/null || true) | awk -v pat="$1" '$0 ~ pat && !f {print $NF; f=1}'
}

if [[ "${1:-}" == "--prepare" ]]; then
  cargo build --release --example doctor
  bin=$(cargo bench --no-run --bench kernels 2>&1 | sed -n 's/.*Executable .*(\(.*\)).*/\1/p' | tail -1)
  [[ -x "$bin" ]] || { echo "could not find the built bench binary" >&2; exit 1; }
  tests=$(cargo test --release --no-run --test tensor_ops 2>&1 |
    sed -n 's/.*Executable .*(\(.*\)).*/\1/p' | tail -1)
  [[ -x "$tests" ]] || { echo "could not find the built tensor_ops test binary" >&2; exit 1; }
  mkdir -p "$BUNDLE"
  cp target/release/examples/doctor "$BUNDLE/doctor"
  cp "$bin" "$BUNDLE/kernels"
  cp "$tests" "$BUNDLE/tensor_ops"
  # Line tables make the binaries ~40 MB each; the bundle should travel light.
  if command -v strip >/dev/null; then strip "$BUNDLE/doctor" "$BUNDLE/kernels" "$BUNDLE/tensor_ops"; fi
  loader=$(first_lib 'libvulkan\.so\.1 ')
  if [[ -z "$loader" ]]; then
    echo "no libvulkan.so.1 here: apt-get install -y libvulkan1, then rerun --prepare" >&2
    exit 1
  fi
  cp -L "$loader" "$BUNDLE/libvulkan.so.1"
  ls -la "$BUNDLE"
  exit 0
fi

QUICK=""
PYTHON=python3
while [[ $# -gt 0 ]]; do
  case "$1" in
    --quick) QUICK="--quick" ;;
    --python) PYTHON="$2"; shift ;;
    *) echo "usage: benches/gpu.sh [--prepare] [--quick] [--python PYTHON]" >&2; exit 2 ;;
  esac
  shift
done

[[ -x "$BUNDLE/kernels" && -x "$BUNDLE/doctor" ]] || {
  echo "missing $BUNDLE: run benches/gpu.sh --prepare on a machine with network first" >&2
  exit 1
}

# The Vulkan loader: the system's if present, else the bundled one.
if [[ -z "$(first_lib 'libvulkan\.so\.1 ')" ]]; then
  export LD_LIBRARY_PATH="$PWD/$BUNDLE${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  echo "using the bundled Vulkan loader"
fi

# The NVIDIA ICD manifest: one named beforehand, else the driver's if installed, else one written
# here.
icd="${VK_DRIVER_FILES:-${VK_ICD_FILENAMES:-}}"
if [[ -z "$icd" ]]; then
  for d in /usr/share/vulkan/icd.d /etc/vulkan/icd.d /usr/local/share/vulkan/icd.d \
    /usr/local/nvidia/share/vulkan/icd.d; do
    [[ -f "$d/nvidia_icd.json" ]] && icd="$d/nvidia_icd.json" && break
  done
fi
if [[ -z "$icd" ]]; then
  lib=$(first_lib 'libGLX_nvidia\.so\.0 ')
  if [[ -z "$lib" ]]; then
    for c in /usr/lib/x86_64-linux-gnu/libGLX_nvidia.so.0 /usr/lib64/libGLX_nvidia.so.0 /usr/lib/libGLX_nvidia.so.0; do
      [[ -f "$c" ]] && lib="$c" && break
    done
  fi
  if [[ -n "$lib" ]]; then
    icd_dir=$(mktemp -d)
    api=$( (nvidia-smi -q 2>/dev/null || true) | awk -F: '/Vulkan/ && !f {gsub(/ /,"",$2); print $2; f=1}')
    cat > "$icd_dir/nvidia_icd.json" <<JSON
{ "file_format_version": "1.0.0", "ICD": { "library_path": "$lib", "api_version": "${api:-1.3.0}" } }
JSON
    icd="$icd_dir/nvidia_icd.json"
    echo "wrote an NVIDIA ICD manifest for $lib"
  else
    echo "warning: no NVIDIA Vulkan driver library (libGLX_nvidia.so.0) found; wgpu may see no GPU" >&2
  fi
fi
if [[ -n "$icd" ]]; then
  export VK_DRIVER_FILES="$icd" VK_ICD_FILENAMES="$icd"
  echo "Vulkan ICD manifest: $icd"
fi

echo "== machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "nvidia-smi not found"
nproc
echo "== adapters (doctor)"
"$BUNDLE/doctor"
"$BUNDLE/doctor" --json > target/gpu-doctor.json

echo "== bench kernels: wgpu on the GPU and the CPU backend, PyTorch on cuda"
torch_args=()
if "$PYTHON" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  torch_args=(--torch "$PYTHON" --torch-device cuda)
else
  echo "no PyTorch with CUDA in $PYTHON: running without the baseline"
fi
set +e
"$BUNDLE/kernels" --device gpu,cpu $QUICK --json-out target/gpu-bench.json "${torch_args[@]}" |
  tee target/gpu-bench.txt
bench_status=${PIPESTATUS[0]}
set -e
echo "written: target/gpu-doctor.json target/gpu-bench.txt target/gpu-bench.json (exit status $bench_status)"

# The parity tests on the same adapter: the WGSL tests open the best adapter wgpu finds, which
# here is the GPU above (they fail, never skip, when there is none). Run even if the bench failed.
parity_status=0
if [[ -x "$BUNDLE/tensor_ops" ]]; then
  echo "== parity: tests/tensor_ops.rs (WGSL tests on the first adapter the doctor lists)"
  set +e
  "$BUNDLE/tensor_ops" 2>&1 | tee target/gpu-parity.txt
  parity_status=${PIPESTATUS[0]}
  set -e
  echo "written: target/gpu-parity.txt (exit status $parity_status)"
fi
[[ $bench_status -eq 0 && $parity_status -eq 0 ]]
