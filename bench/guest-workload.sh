#!/bin/sh
# bench/guest-workload.sh: the workloads of bench/guest, run by busybox sh inside the guest (copied
# into the initramfs with guest/build.sh --add) and natively on the host with the same busybox and
# xz binaries, so every system runs the same code on the same input.
#
# usage: guest-workload.sh MIB LOOPS WORKLOADS DIR XZ
#   MIB        size of the test file in MiB (made in DIR, which should be a tmpfs)
#   LOOPS      iterations of the shell loop
#   WORKLOADS  comma list of loop,sha256,gzip,xz (the file is made only when one needs it)
#   DIR        scratch directory (removed files only: data, data.gz, data.xz, block)
#   XZ         the xz program (busybox's xz applet only decompresses)
# Prints, for each workload, "lookout-bench: begin NAME" just before it starts and
# "lookout-bench: end NAME" as soon as it ends (bench/guest times the workload between the
# arrivals of these two lines, with the host's clock: the guest kernel's clock cannot be trusted,
# see bench/guest), then
#   lookout-bench: NAME NS RESULT
# NS is the same span by the guest kernel's monotonic clock (the "now at" line of
# /proc/timer_list; /proc/uptime in 10 ms steps when that is missing), kept for comparison.
# RESULT is what the workload computed (the loop's sum, the file's SHA-256, the SHA-256 and size
# of the compressed output): bench/guest compares it across systems.  The first line is
# "lookout-bench: start NS", the last "lookout-bench: done NS" (the guest clock then).  Neither
# the boot nor the making of the file is inside a begin/end pair.
# Trusts: nothing; it only reads its arguments.
bb=busybox
mib=$1 loops=$2 work=,$3, dir=$4 xz=$5

now() { # sets T to the monotonic clock in ns
	T=
	if [ -r /proc/timer_list ]; then
		while read -r a b c _; do
			if [ "$a $b" = "now at" ]; then
				T=$c
				break
			fi
		done </proc/timer_list
	fi
	if [ -z "$T" ]; then
		read -r u _ </proc/uptime
		T=${u%.*}${u#*.}0000000
	fi
}

emit() { echo "lookout-bench: $1 $(($3 - $2)) $4"; }
# begin NAME: the clock is read first, so the guest figure does not include the echo
begin() {
	now
	t0=$T
	echo "lookout-bench: begin $1"
}
# end NAME: the clock is read and the line printed before anything else is done
end() {
	now
	echo "lookout-bench: end $1"
}

cd "$dir" || exit 1
now
echo "lookout-bench: start $T"

case $work in *,loop,*)
	begin loop
	i=0 s=0
	while [ $i -lt "$loops" ]; do
		s=$(((s * 31 + i * i) % 1000003))
		i=$((i + 1))
	done
	end loop
	emit loop "$t0" "$T" "$s"
	;;
esac

case $work in *,sha256,* | *,gzip,* | *,xz,*) ;; *)
	now
	echo "lookout-bench: done $T"
	exit 0
	;;
esac

# The test file: a 1 MiB block of numbered lines, each one of eight sentences picked by a seeded
# Park-Miller generator (exact in awk's doubles), then MIB copies of it with the letters rotated
# by the copy's index (mod 26): compressible like text, but no copy repeats within xz -3's 4 MiB
# dictionary or gzip's 32 KiB window, so neither finds the file trivial.
now
tg=$T
$bb awk 'BEGIN {
	n = split("the guest kernel runs its timer interrupt handler and returns to user mode|" \
		"a translated block ends at the first jump, call or return it meets|" \
		"the code cache maps guest physical addresses to host code|" \
		"every guest value is checked before the monitor uses it|" \
		"page tables are walked by the soft MMU on a TLB miss|" \
		"the serial console copies bytes from the guest to the host terminal|" \
		"a write to a translated page invalidates its blocks|" \
		"interrupts are delivered between blocks, never inside one", w, "|")
	x = 12345; out = 0; ln = 0
	while (out < 1100000) {
		x = (x * 16807) % 2147483647
		line = sprintf("%07d %s", ln++, w[x % n + 1])
		print line
		out += length(line) + 1
	}
}' | $bb head -c 1048576 >block
a=abcdefghijklmnopqrstuvwxyz
k=0
: >data
while [ $k -lt "$mib" ]; do
	r=$((k % 26))
	$bb tr a-z "$($bb expr substr $a $((r + 1)) 26)$($bb expr substr $a 1 $r)" <block >>data
	k=$((k + 1))
done
$bb rm -f block
set -- $($bb sha256sum data)
sum=$1
now
emit make "$tg" "$T" "$sum"

case $work in *,sha256,*)
	begin sha256
	set -- $($bb sha256sum data)
	end sha256
	emit sha256 "$t0" "$T" "$1"
	;;
esac

case $work in *,gzip,*)
	begin gzip
	$bb gzip -6 -c data >data.gz
	end gzip
	set -- $($bb sha256sum data.gz)
	emit gzip "$t0" "$T" "$1:$($bb stat -c %s data.gz)"
	$bb rm -f data.gz
	;;
esac

case $work in *,xz,*)
	begin xz
	"$xz" -3 -T1 -c data >data.xz
	end xz
	set -- $($bb sha256sum data.xz)
	# Not timed: the round trip must give the file back.
	set -- "$1" $("$xz" -d -c data.xz | $bb sha256sum)
	rt=roundtrip-ok
	[ "$2" = "$sum" ] || rt=roundtrip-BAD
	emit xz "$t0" "$T" "$1:$($bb stat -c %s data.xz):$rt"
	$bb rm -f data.xz
	;;
esac
$bb rm -f data
now
echo "lookout-bench: done $T"
