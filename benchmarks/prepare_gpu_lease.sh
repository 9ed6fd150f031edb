#!/usr/bin/env bash
# Copy what benchmarks/gpu_check.sh needs on a GPU machine, and that lives outside the repository, into
# gpu_payload/ (git-ignored; the device tool carries it with `carry: ["gpu_payload"]`, see docs/gpu.md):
#   gpu_payload/teachers/cifar10_resnet56.pt, cifar10_mobilenetv2_w0.5.pt   the real teacher weights
#   gpu_payload/cifar10-test.tar.gz                                         the 10,000-image CIFAR-10 test split
# The demo subset (calibration images) is tracked in demo/ and travels anyway.
#
# Usage: benchmarks/prepare_gpu_lease.sh        Env: SHARED_DATA (default ../shared/data)
set -euo pipefail

if (($#)); then
  echo "usage: benchmarks/prepare_gpu_lease.sh (no arguments; SHARED_DATA=... to read another data folder)" >&2
  exit 2
fi
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
shared=${SHARED_DATA:-$root/../shared/data}
payload=$root/gpu_payload
limit_mib=60  # the device tool carries at most 64 MiB of working tree in all

for f in teachers/cifar10_resnet56.pt teachers/cifar10_mobilenetv2_w0.5.pt cifar10/cifar10-jpeg.tar.gz; do
  [[ -f $shared/$f ]] || { echo "missing $shared/$f (see $shared/README.md)" >&2; exit 1; }
done

rm -rf "$payload"
mkdir -p "$payload/teachers"
cp "$shared/teachers/cifar10_resnet56.pt" "$shared/teachers/cifar10_mobilenetv2_w0.5.pt" "$payload/teachers/"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
tar -xzf "$shared/cifar10/cifar10-jpeg.tar.gz" -C "$tmp" test
tar -czf "$payload/cifar10-test.tar.gz" -C "$tmp" test

du -ah "$payload"
size_kib=$(du -sk "$payload" | cut -f1)
if ((size_kib > limit_mib * 1024)); then
  echo "gpu_payload/ is ${size_kib} KiB, over the ${limit_mib} MiB this script allows for carrying" >&2
  exit 1
fi
tracked_kib=$(cd "$root" && git ls-files -z | xargs -0 du -ck 2>/dev/null | tail -1 | cut -f1)
echo "gpu_payload/: ${size_kib} KiB; tracked files: ${tracked_kib} KiB; together they must stay under 64 MiB"
