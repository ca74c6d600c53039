#!/usr/bin/env bash
# Installs every Debian package that building lookout, its tests and the default guest need.
# Idempotent: packages already present are skipped, so a warm machine pays only dpkg-query.
set -euo pipefail

PKGS=(
  build-essential clang lld llvm libclang-rt-14-dev clang-format pkg-config
  libzydis-dev      # x86 decoder for the software CPU (cpu/bt)
  libcjson-dev      # JSON for the control socket (api/)
  libcmocka-dev     # C unit-test framework
  libseccomp-dev    # syscall allow-list after set-up
  libzstd-dev       # snapshot memory compression
  libsodium-dev     # SHA-256 over snapshot state files
  libxxhash-dev     # XXH64 digests of snapshot memory pages
  liblz4-dev        # host-side decompression of LZ4 kernel payloads (direct vmlinux boot)
  libslirp-dev      # virtio-net user networking (--net user)
  e2fsprogs         # tests: ext4 images for the virtio-blk guest tests
  python3 python3-pytest  # integration tests drive the real binary
  busybox-static cpio gzip xz-utils kmod  # the default guest's initramfs
  binutils
  acpica-tools      # iasl -d checks the ACPI tables in tests/unit/test_acpi.c
)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
