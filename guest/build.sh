#!/usr/bin/env bash
# Builds lookout's default guest from real Debian packages: the `linux-image-cloud-amd64` kernel
# (resolved to the versioned linux-image-6.1.0-NN-cloud-amd64 package it depends on) and
# `busybox-static`, fetched with `apt-get download` and unpacked with `dpkg-deb -x` (nothing is
# installed on the host).  Output: the kernel (bzImage) and a gzip'ed newc initramfs holding
# busybox, the virtio modules, /init (guest/init) and the exit-port helper (guest/exitport.c).
#
# Invoked as `lookout guest build [options]` or directly.  Cached: the build is redone only when
# an input changes (package versions, this script, /init, the helper's source, the --add list and
# the programs it names).  Trusts: apt's package lists and signatures (apt-get download verifies
# them); the host programs named with --add.
set -euo pipefail

SELF_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
KERNEL_META=${LOOKOUT_GUEST_KERNEL:-linux-image-cloud-amd64}

# The default kernel command line for this board.  Why each word:
#  console=ttyS0   the 16550 at 0x3f8 is the console from the first line (8250 console is built in)
#  quiet           serial output costs VM exits; boot messages are for debugging (--append)
#  panic=-1        a panic reboots at once, and a reboot ends lookout: a broken guest never hangs
#  (no reboot=)    Linux's default tries the FADT reset register first, then the i8042 reset
#                  line (port 0x64); the board has both, so either ends lookout
#  pci=off         the board has no PCI host bridge: skip probing config space
#  mitigations=off the guest is a single-user test appliance and the isolation boundary is the
#                  VMM; the CPUID model reports Intel without ARCH_CAPABILITIES, so Linux would
#                  otherwise turn on page-table isolation (a CR3 switch on every kernel entry)
# No tsc_early_khz=: lookout's CPUID model reports the TSC frequency in leaf 0x15 (vendor Intel,
# the only vendor for which Linux reads that leaf), so the kernel needs no calibration.  QEMU's
# TCG CPU does not, which is why bench/boot adds tsc_early_khz= for QEMU only.
DEFAULT_APPEND="console=ttyS0 quiet panic=-1 pci=off mitigations=off"

# Virtio modules in load order (insmod does not resolve dependencies): the core, the MMIO
# transport (the board's devices are virtio-mmio, described in the ACPI DSDT), then drivers.
# When depmod is available the order is recomputed from the modules.dep it writes.
MODULES=(
  drivers/virtio/virtio_ring.ko
  drivers/virtio/virtio.ko
  drivers/virtio/virtio_mmio.ko
  drivers/block/virtio_blk.ko
  net/core/failover.ko
  drivers/net/net_failover.ko
  drivers/net/virtio_net.ko
  drivers/char/hw_random/virtio-rng.ko
)

usage() {
  cat <<EOF
usage: ${0##*/} [--print-paths] [--add PROGRAM]... [--output DIR] [--cache DIR] [--force] [-q]
Builds the default lookout guest (Debian $KERNEL_META + busybox-static initramfs).
  --print-paths  build if needed, then print KERNEL=, INITRD=, APPEND= (one per line)
  --add PROGRAM[=GUESTPATH]
                 copy a host program (name or path) with its shared libraries into the initramfs
                 (repeatable), at its host path or at GUESTPATH, e.g. --add xz --add sha256sum
                 --add build/iorand=/usr/local/bin/iorand
  --output DIR   where the kernel and initramfs go (default: a directory in the cache)
  --cache DIR    download cache (default: \$LOOKOUT_HOME/guest/cache, else
                 \${XDG_CACHE_HOME:-~/.cache}/lookout)
  --force        rebuild even if nothing changed
  -q, --quiet    only errors (and --print-paths output)
Environment: LOOKOUT_GUEST_KERNEL selects another kernel meta package (e.g. linux-image-amd64).
EOF
}

die() { echo "guest/build.sh: error: $*" >&2; exit 1; }
QUIET=0
say() { [ "$QUIET" = 1 ] || echo "guest/build.sh: $*" >&2; }

PRINT=0 FORCE=0 OUTPUT= CACHE= ADDS=()
while [ $# -gt 0 ]; do
  case $1 in
    --print-paths) PRINT=1 ;;
    --add) [ $# -ge 2 ] || die "--add needs a program name"; ADDS+=("$2"); shift ;;
    --add=*) ADDS+=("${1#--add=}") ;;
    --output) [ $# -ge 2 ] || die "--output needs a directory"; OUTPUT=$2; shift ;;
    --output=*) OUTPUT=${1#--output=} ;;
    --cache) [ $# -ge 2 ] || die "--cache needs a directory"; CACHE=$2; shift ;;
    --cache=*) CACHE=${1#--cache=} ;;
    --force) FORCE=1 ;;
    -q | --quiet) QUIET=1 ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown option '$1'" ;;
  esac
  shift
done

if [ -z "$CACHE" ]; then
  if [ -n "${LOOKOUT_HOME:-}" ]; then CACHE=$LOOKOUT_HOME/guest/cache
  else CACHE=${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/lookout; fi
fi
mkdir -p "$CACHE/debs" || die "cannot create the cache directory $CACHE"
CACHE=$(cd "$CACHE" && pwd)

for tool in apt-cache apt-get dpkg-deb cpio gzip sha256sum flock; do
  command -v "$tool" >/dev/null || die "'$tool' not found: run scripts/setup.sh (Debian host needed)"
done

# One build at a time per cache (tests and the CLI may ask at once).
exec 9>"$CACHE/.lock"
flock 9

# --- inputs -------------------------------------------------------------------------------------
# Resolve the versioned kernel package and the candidate versions.  Works offline as long as the
# package lists exist; without them, try one `apt-get update` (root only).
resolve() {
  KPKG=$(apt-cache depends "$KERNEL_META" 2>/dev/null |
    awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }')
  [ -n "$KPKG" ] || return 1
  KVER=$(apt-cache policy "$KPKG" 2>/dev/null | awk '$1 == "Candidate:" { print $2; exit }')
  BVER=$(apt-cache policy busybox-static 2>/dev/null | awk '$1 == "Candidate:" { print $2; exit }')
  [ -n "$KVER" ] && [ "$KVER" != "(none)" ] && [ -n "$BVER" ] && [ "$BVER" != "(none)" ]
}
# apt-cache needs ~0.4 s a call here; the answer changes only with the package lists, so it is
# remembered next to a signature of them.
lists_sig() {
  { echo "$KERNEL_META"; stat -c '%n %Y %s' /var/lib/apt/lists/*Packages* /etc/apt/preferences* \
    /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null || true; } | sha256sum | cut -d' ' -f1
}
RESOLVED=1
SIG=$(lists_sig)
if [ -r "$CACHE/resolved" ] && [ "$(sed -n 1p "$CACHE/resolved")" = "$SIG" ]; then
  { read -r _; read -r KPKG KVER BVER; } <"$CACHE/resolved"
elif resolve; then
  printf '%s\n%s %s %s\n' "$SIG" "$KPKG" "$KVER" "$BVER" >"$CACHE/resolved"
else
  if [ "$(id -u)" = 0 ]; then
    say "package lists do not know $KERNEL_META: running apt-get update"
    apt-get update -qq >/dev/null 2>&1 || true
  fi
  if resolve; then
    printf '%s\n%s %s %s\n' "$(lists_sig)" "$KPKG" "$KVER" "$BVER" >"$CACHE/resolved"
  else
    RESOLVED=0
  fi
fi

# Programs for --add: resolved to absolute paths now, so the cache key sees what will be copied.
ADD_PATHS=()
for p in ${ADDS[@]+"${ADDS[@]}"}; do
  dest=
  if [[ $p == *=* ]]; then dest=${p#*=}; p=${p%%=*}; fi
  if [[ $p == */* ]]; then q=$p; else q=$(command -v -- "$p" || true); fi
  [ -n "$q" ] && [ -f "$q" ] || die "--add $p: no such program on this host (install it first)"
  [ -n "$dest" ] || dest=$q
  [[ $dest == /* ]] || dest=$(readlink -f -- "$dest")
  # The guest's init mounts tmpfs/proc/sysfs/devtmpfs over these: a file there would vanish.
  case $dest in
    /tmp/*|/run/*|/proc/*|/sys/*|/dev/*)
      die "--add $p: the guest mounts over ${dest%/*} at boot, so $dest would be hidden there; give a place in the guest: --add $p=/usr/local/bin/${dest##*/}" ;;
  esac
  ADD_PATHS+=("$(readlink -f -- "$q")|$dest")
done

if [ -z "$OUTPUT" ]; then
  if [ ${#ADD_PATHS[@]} -eq 0 ]; then OUTPUT=$CACHE/guest
  else
    tag=$(printf '%s\n' "${ADD_PATHS[@]}" | sort | sha256sum | cut -c1-12)
    OUTPUT=$CACHE/guest-$tag
  fi
fi
mkdir -p "$OUTPUT" || die "cannot create the output directory $OUTPUT"
OUTPUT=$(cd "$OUTPUT" && pwd)

print_paths() {
  echo "KERNEL=$OUTPUT/vmlinuz"
  echo "INITRD=$OUTPUT/initramfs.cpio.gz"
  echo "APPEND=$DEFAULT_APPEND"
}

if [ "$RESOLVED" = 0 ]; then
  # Offline and no package lists: a previous build is still a good guest.
  if [ -s "$OUTPUT/vmlinuz" ] && [ -s "$OUTPUT/initramfs.cpio.gz" ]; then
    say "warning: cannot resolve $KERNEL_META (no package lists?); using the cached guest"
    [ "$PRINT" = 1 ] && print_paths
    exit 0
  fi
  die "cannot resolve $KERNEL_META and busybox-static with apt-cache: run 'apt-get update' (needs network access to a Debian mirror) and try again"
fi

key_inputs() {
  echo "kernel $KPKG $KVER"
  echo "busybox-static $BVER"
  echo "modules ${MODULES[*]}"
  sha256sum "${BASH_SOURCE[0]}" "$SELF_DIR/init" "$SELF_DIR/exitport.c" | cut -d' ' -f1
  for a in ${ADD_PATHS[@]+"${ADD_PATHS[@]}"}; do
    real=${a%%|*}
    echo "add ${a#*|} $(sha256sum <"$real" | cut -d' ' -f1)"
    ldd "$real" 2>/dev/null | awk '{ print $1, $3 }' || true
  done
}
KEY=$(key_inputs | sha256sum | cut -d' ' -f1)

if [ "$FORCE" = 0 ] && [ -s "$OUTPUT/vmlinuz" ] && [ -s "$OUTPUT/initramfs.cpio.gz" ] &&
  [ "$(cat "$OUTPUT/inputs.sha256" 2>/dev/null)" = "$KEY" ]; then
  say "up to date: $OUTPUT"
  [ "$PRINT" = 1 ] && print_paths
  exit 0
fi

# --- fetch --------------------------------------------------------------------------------------
fetch() { # package version -> prints the .deb path
  local pkg=$1 ver=$2 dir
  dir=$CACHE/debs/${pkg}_${ver//:/%3a}
  if ! compgen -G "$dir/*.deb" >/dev/null; then
    say "downloading $pkg $ver"
    rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
    # As root, apt drops to the _apt user, which cannot write into a private cache: stay root.
    local sandbox=()
    [ "$(id -u)" = 0 ] && sandbox=(-o APT::Sandbox::User=root)
    (cd "$dir.tmp" && apt-get download -q ${sandbox[@]+"${sandbox[@]}"} "$pkg=$ver" >&2) ||
      die "apt-get download $pkg=$ver failed: check network access to the Debian mirror (apt-get update)"
    rm -rf "$dir" && mv "$dir.tmp" "$dir"
  fi
  compgen -G "$dir/*.deb" | head -n1
}
fetch_all() { KDEB=$(fetch "$KPKG" "$KVER") && BDEB=$(fetch busybox-static "$BVER"); }
if ! fetch_all; then
  # Stale package lists name versions the mirror no longer has: refresh them once (root only).
  fetched=0
  if [ "$(id -u)" = 0 ]; then
    say "download failed: refreshing the package lists and trying once more"
    if apt-get update -qq >/dev/null 2>&1 && resolve; then
      printf '%s\n%s %s %s\n' "$(lists_sig)" "$KPKG" "$KVER" "$BVER" >"$CACHE/resolved"
      KEY=$(key_inputs | sha256sum | cut -d' ' -f1)
      if [ "$FORCE" = 0 ] && [ "$(cat "$OUTPUT/inputs.sha256" 2>/dev/null)" = "$KEY" ] &&
        [ -s "$OUTPUT/vmlinuz" ] && [ -s "$OUTPUT/initramfs.cpio.gz" ]; then
        say "up to date: $OUTPUT"
        [ "$PRINT" = 1 ] && print_paths
        exit 0
      fi
      fetch_all && fetched=1
    fi
  fi
  if [ "$fetched" = 0 ]; then
    if [ -s "$OUTPUT/vmlinuz" ] && [ -s "$OUTPUT/initramfs.cpio.gz" ]; then
      say "warning: cannot download the packages; using the guest built earlier in $OUTPUT"
      [ "$PRINT" = 1 ] && print_paths
      exit 0
    fi
    die "cannot download $KPKG $KVER / busybox-static $BVER (network? run apt-get update)"
  fi
fi

# --- build --------------------------------------------------------------------------------------
say "building the guest for $KPKG $KVER in $OUTPUT"
WORK=$(mktemp -d "$CACHE/build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
dpkg-deb -x "$KDEB" "$WORK/k"
dpkg-deb -x "$BDEB" "$WORK/bb"

vmlinuz=$(compgen -G "$WORK/k/boot/vmlinuz-*" | head -n1) || true
[ -n "$vmlinuz" ] || die "$KPKG has no boot/vmlinuz-*: not a kernel image package?"
mods=$(compgen -G "$WORK/k/lib/modules/*" | head -n1) || true
[ -n "$mods" ] || die "$KPKG has no lib/modules/<version>/"
KREL=${mods##*/}

R=$WORK/root
mkdir -p "$R"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,run,root,mnt,etc/lookout,var/log} \
  "$R/lib/modules/$KREL"

# busybox and its applets as symlinks, laid out as `busybox --list-full` says.
install -m 755 "$WORK/bb/bin/busybox" "$R/bin/busybox"
ln -s busybox "$R/bin/sh"
if applets=$("$R/bin/busybox" --list-full 2>/dev/null); then
  while read -r a; do
    [ -n "$a" ] && [ ! -e "$R/$a" ] && [ ! -L "$R/$a" ] || continue
    mkdir -p "$R/$(dirname "$a")"
    ln -s /bin/busybox "$R/$a"
  done <<<"$applets"
else
  say "warning: cannot run busybox on this host; /init makes the applet links at boot"
fi

# Modules (the package ships no modules.dep: depmod makes one for busybox modprobe).
: >"$R/etc/lookout/modules"
for m in "${MODULES[@]}"; do
  if [ -f "$mods/kernel/$m" ]; then
    mkdir -p "$R/lib/modules/$KREL/kernel/$(dirname "$m")"
    cp "$mods/kernel/$m" "$R/lib/modules/$KREL/kernel/$m"
    echo "kernel/$m" >>"$R/etc/lookout/modules"
  else
    say "note: $KPKG has no $m (built in or absent); skipped"
  fi
done
for f in modules.builtin modules.builtin.modinfo modules.order; do
  [ -f "$mods/$f" ] && cp "$mods/$f" "$R/lib/modules/$KREL/"
done
DEPMOD=$(command -v depmod || echo /sbin/depmod)
if [ -x "$DEPMOD" ] && "$DEPMOD" -b "$R" "$KREL" 2>/dev/null; then
  # Load order from modules.dep: each module after its dependencies (modprobe loads a module's
  # dependency list from its end), each module once.
  awk -F': *' 'NR == FNR { dep[$1] = $2; next }
    function load(m,   n, d, i) {
      if (m in done) return
      done[m] = 1
      n = split(dep[m], d, " ")
      for (i = n; i >= 1; i--) load(d[i])
      print m
    }
    { load($0) }' "$R/lib/modules/$KREL/modules.dep" "$R/etc/lookout/modules" >"$WORK/order"
  mv "$WORK/order" "$R/etc/lookout/modules"
else
  say "warning: depmod failed or missing (install kmod); /init loads modules in the built-in order"
fi

# The exit-port helper (no /dev/port in Debian's cloud kernel).
CC=${CC:-cc}
if command -v "$CC" >/dev/null; then
  "$CC" -static -nostdlib -Os -fno-stack-protector -fno-pie -no-pie -Wall -Wextra -Werror \
    -o "$R/sbin/lookout-exit" "$SELF_DIR/exitport.c" ||
    die "compiling guest/exitport.c failed (needs gcc: run scripts/setup.sh)"
  strip "$R/sbin/lookout-exit" 2>/dev/null || true
else
  say "warning: no C compiler: the guest cannot report exit codes (only power off)"
fi

install -m 755 "$SELF_DIR/init" "$R/init"
echo "$KREL" >"$R/etc/lookout/kernel-release"
echo "$KPKG $KVER" >"$R/etc/lookout/kernel-package"
cat >"$R/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
EOF
echo "root:x:0:" >"$R/etc/group"
cat >"$R/etc/profile" <<'EOF'
export PS1='lookout:\w# '
EOF
[ "$(id -u)" = 0 ] && mknod -m 600 "$R/dev/console" c 5 1 2>/dev/null || true

# Host programs with their shared libraries and the dynamic loader, at the same paths.
copy_file() { # host path -> same path in the initramfs (symlinks resolved)
  local src=$1
  mkdir -p "$R$(dirname "$src")"
  rm -f "$R$src"
  cp -L "$src" "$R$src"
}
for a in ${ADD_PATHS[@]+"${ADD_PATHS[@]}"}; do
  real=${a%%|*} named=${a#*|}
  # Install under the name it was asked by (its PATH location), content of the real file.
  mkdir -p "$R$(dirname "$named")"
  rm -f "$R$named"
  cp -L "$real" "$R$named"
  chmod 755 "$R$named"
  if libs=$(ldd "$real" 2>/dev/null); then
    while read -r line; do
      case $line in
        *"=> /"*) lib=${line#*=> }; lib=${lib%% *} ;;
        /*) lib=${line%% *} ;;
        *) continue ;;
      esac
      [ -f "$lib" ] && copy_file "$lib"
    done <<<"$libs"
  fi
  say "added $named"
done

# The archive: newc, owned by root, sorted for a stable layout.
(cd "$R" && find . -mindepth 1 -print0 | LC_ALL=C sort -z |
  cpio --null --create --format=newc --owner=0:0 --quiet) | gzip -6 -n >"$WORK/initramfs.cpio.gz"

cp "$vmlinuz" "$WORK/vmlinuz"
mv -f "$WORK/vmlinuz" "$OUTPUT/vmlinuz"
mv -f "$WORK/initramfs.cpio.gz" "$OUTPUT/initramfs.cpio.gz"
echo "$KREL" >"$OUTPUT/kernel-release"
echo "$DEFAULT_APPEND" >"$OUTPUT/append"
echo "$KEY" >"$OUTPUT/inputs.sha256"
say "done: kernel $KREL, initramfs $(du -h "$OUTPUT/initramfs.cpio.gz" | cut -f1)"
[ "$PRINT" = 1 ] && print_paths
exit 0
