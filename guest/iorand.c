/* iorand: random-offset direct I/O for bench/io, in the guest and on the host alike (busybox dd
 * can only do sequential offsets).  Built static by bench/io and copied into a benchmark guest
 * with `guest/build.sh --add`; not part of the default guest.
 *
 *   iorand PATH r|w BLOCK COUNT [SEED]
 *
 * Opens PATH (a block device or a file) with O_DIRECT, and does COUNT preads or pwrites of BLOCK
 * bytes (a multiple of 512, at most 1 MiB) at offsets drawn uniformly from the BLOCK-aligned
 * slots of PATH's size (xorshift64*, fixed seed: the same offsets every run).  Writes carry a
 * non-zero pattern.  Prints one line: "iorand: COUNT ops BLOCK B in S s: IOPS iops, MB/s" with
 * its own clock (bench/io times the run on the host as well, since a guest clock may drift).
 * Trusts its arguments only as far as it checks them; exits 2 on bad usage, 1 on I/O errors. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int usage(void)
{
    fprintf(stderr, "usage: iorand PATH r|w BLOCK COUNT [SEED]  (BLOCK: multiple of 512)\n");
    return 2;
}

int main(int argc, char **argv)
{
    if (argc < 5 || argc > 6) return usage();
    char mode = argv[2][0];
    char *end;
    unsigned long long bs = strtoull(argv[3], &end, 10);
    if (*end || bs == 0 || bs % 512 || bs > (1u << 20) || argv[2][1] ||
        (mode != 'r' && mode != 'w'))
        return usage();
    unsigned long long count = strtoull(argv[4], &end, 10);
    if (*end || count == 0) return usage();
    uint64_t x = argc == 6 ? strtoull(argv[5], NULL, 10) : 0x9e3779b97f4a7c15ull;
    if (!x) x = 1;

    int fd = open(argv[1], (mode == 'w' ? O_RDWR : O_RDONLY) | O_DIRECT);
    if (fd < 0) {
        fprintf(stderr, "iorand: cannot open %s with O_DIRECT: %s\n", argv[1], strerror(errno));
        return 1;
    }
    struct stat st;
    uint64_t size = 0;
    if (fstat(fd, &st) == 0 && S_ISBLK(st.st_mode)) {
        if (ioctl(fd, BLKGETSIZE64, &size) < 0) size = 0;
    } else if (fstat(fd, &st) == 0) {
        size = (uint64_t)st.st_size;
    }
    uint64_t slots = size / bs;
    if (!slots) {
        fprintf(stderr, "iorand: %s is smaller than one block\n", argv[1]);
        return 1;
    }
    void *buf;
    if (posix_memalign(&buf, 4096, bs)) return 1;
    memset(buf, mode == 'w' ? 0x5a : 0, bs);

    double t0 = now_s();
    for (unsigned long long i = 0; i < count; i++) {
        x ^= x >> 12; /* xorshift64* */
        x ^= x << 25;
        x ^= x >> 27;
        off_t off = (off_t)(((x * 0x2545f4914f6cdd1dull) >> 11) % slots * bs);
        ssize_t n = mode == 'w' ? pwrite(fd, buf, bs, off) : pread(fd, buf, bs, off);
        if (n != (ssize_t)bs) {
            fprintf(stderr, "iorand: %s at %lld: %s\n", mode == 'w' ? "pwrite" : "pread",
                    (long long)off, n < 0 ? strerror(errno) : "short transfer");
            return 1;
        }
    }
    double dt = now_s() - t0;
    if (dt <= 0) dt = 1e-9;
    printf("iorand: %llu ops %llu B in %.3f s: %.0f iops, %.1f MB/s\n", count, bs, dt,
           (double)count / dt, (double)count * (double)bs / dt / 1e6);
    free(buf);
    close(fd);
    return 0;
}
