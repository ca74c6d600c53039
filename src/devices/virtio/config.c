/* Parsing of the virtio device options (see config.h).  Trusts nothing from argv. */
#include "devices/virtio/config.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "devices/virtio/ratelimit.h"
#include "util/log.h"

int vdev_parse_rate(const char *s, uint64_t *out)
{
    if (!s || !isdigit((unsigned char)*s)) return -EINVAL;
    uint64_t v = 0;
    for (; isdigit((unsigned char)*s); s++) {
        if (v > (UINT64_MAX - 9) / 10) return -EINVAL;
        v = v * 10 + (uint64_t)(*s - '0');
    }
    unsigned shift = 0;
    switch (*s) {
    case 0: break;
    case 'k':
    case 'K':
        shift = 10;
        s++;
        break;
    case 'm':
    case 'M':
        shift = 20;
        s++;
        break;
    case 'g':
    case 'G':
        shift = 30;
        s++;
        break;
    default: return -EINVAL;
    }
    if (*s || v > (UINT64_MAX >> shift)) return -EINVAL;
    *out = v << shift;
    return 0;
}

static int parse_port(const char *s, const char *end, uint16_t *out)
{
    if (s == end || end - s > 5) return -1;
    unsigned v = 0;
    for (const char *p = s; p < end; p++) {
        if (!isdigit((unsigned char)*p)) return -1;
        v = v * 10 + (unsigned)(*p - '0');
    }
    if (v == 0 || v > 65535) return -1;
    *out = (uint16_t)v;
    return 0;
}

/* hostfwd=tcp:[HOSTADDR]:HOSTPORT-[GUESTADDR]:GUESTPORT (QEMU's syntax; guest address ignored
 * unless empty or the DHCP address, which is the only one the guest gets). */
static int parse_fwd(struct vdev_spec *d, const char *v)
{
    struct vnet_fwd f = {0};
    if (!strncmp(v, "tcp:", 4))
        v += 4;
    else if (!strncmp(v, "udp:", 4)) {
        f.udp = true;
        v += 4;
    } else
        return -1;
    const char *colon = strchr(v, ':');
    if (!colon) return -1;
    if (colon != v) {
        unsigned a, b, c, e;
        char tail;
        if (sscanf(v, "%3u.%3u.%3u.%3u%c", &a, &b, &c, &e, &tail) != 5 || tail != ':' || a > 255 ||
            b > 255 || c > 255 || e > 255)
            return -1;
        f.host_addr = a << 24 | b << 16 | c << 8 | e;
    }
    const char *dash = strchr(colon, '-');
    if (!dash || parse_port(colon + 1, dash, &f.host_port) < 0) return -1;
    const char *gcolon = strchr(dash, ':');
    if (!gcolon) return -1;
    const char *gend = gcolon + 1 + strcspn(gcolon + 1, ",");
    if (parse_port(gcolon + 1, gend, &f.guest_port) < 0) return -1;
    if (d->nfwd >= VNET_MAX_FWD) return -1;
    d->fwd[d->nfwd++] = f;
    return 0;
}

/* burst=MS: 1..TB_BURST_MS_MAX milliseconds */
static int parse_burst(const char *s, uint32_t *out)
{
    uint64_t v;
    if (vdev_parse_rate(s, &v) < 0 || v == 0 || v > TB_BURST_MS_MAX) return -1;
    for (const char *p = s; *p; p++)
        if (!isdigit((unsigned char)*p)) return -1; /* no K/M/G: these are milliseconds */
    *out = (uint32_t)v;
    return 0;
}

/* One rate setting of --net: 1 parsed, 0 not a rate setting, -1 a rate setting with a bad value.
 * bw=/pps= set both directions; rx-/tx- prefixed ones one direction. */
static int parse_net_limit(struct vdev_spec *d, const char *s)
{
    static const struct {
        const char *name;
        bool bytes, rx, tx;
    } keys[] = {{"bw=", true, true, true},     {"pps=", false, true, true},
                {"rx-bw=", true, true, false}, {"rx-pps=", false, true, false},
                {"tx-bw=", true, false, true}, {"tx-pps=", false, false, true}};
    if (!strncmp(s, "burst=", 6)) return parse_burst(s + 6, &d->burst_ms) < 0 ? -1 : 1;
    for (unsigned i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
        size_t n = strlen(keys[i].name);
        if (strncmp(s, keys[i].name, n)) continue;
        uint64_t v;
        if (vdev_parse_rate(s + n, &v) < 0 || v == 0) return -1;
        if (keys[i].rx) *(keys[i].bytes ? &d->rx_bw : &d->rx_pps) = v;
        if (keys[i].tx) *(keys[i].bytes ? &d->tx_bw : &d->tx_pps) = v;
        return 1;
    }
    return 0;
}

#define NET_LIMITS_HELP "bw=RATE, pps=N, rx-bw=, tx-bw=, rx-pps=, tx-pps=, burst=MS"

int vdev_parse(struct vdev_list *l, const char *opt, const char *val)
{
    if (l->n >= VDEV_MAX)
        return err_set(EINVAL, "%s: at most %d virtio devices (disks, NICs, rng together)", opt,
                       VDEV_MAX);
    struct vdev_spec d;
    memset(&d, 0, sizeof(d));
    if (!strcmp(opt, "--rng")) {
        d.kind = VDEV_RNG;
        if (val && *val) {
            if (strncmp(val, "bw=", 3) || vdev_parse_rate(val + 3, &d.bw) < 0)
                return err_set(EINVAL, "--rng \"%s\": expected nothing or bw=RATE (e.g. bw=1M)",
                               val);
        }
        l->d[l->n++] = d;
        return 0;
    }
    if (!val || !*val) return err_set(EINVAL, "option %s needs a value", opt);
    char buf[512];
    if (strlen(val) >= sizeof(buf)) return err_set(EINVAL, "%s: value too long", opt);
    if (!strcmp(opt, "--disk")) {
        d.kind = VDEV_BLK;
        /* PATH[,ro][,bw=RATE][,iops=N]: the path ends at the first comma (paths with commas
         * are not supported: use a symbolic link). */
        size_t plen = strcspn(val, ",");
        if (plen == 0) return err_set(EINVAL, "--disk \"%s\": no image path", val);
        if (plen >= sizeof(d.path)) return err_set(EINVAL, "--disk: image path too long");
        memcpy(d.path, val, plen);
        d.path[plen] = 0;
        const char *opts = val + plen;
        while (*opts == ',') {
            opts++;
            size_t n = strcspn(opts, ",");
            memcpy(buf, opts, n);
            buf[n] = 0;
            if (!strcmp(buf, "ro"))
                d.ro = true;
            else if (!strncmp(buf, "bw=", 3) && vdev_parse_rate(buf + 3, &d.bw) == 0 && d.bw)
                ;
            else if (!strncmp(buf, "iops=", 5) && vdev_parse_rate(buf + 5, &d.iops) == 0 && d.iops)
                ;
            else if (!strncmp(buf, "burst=", 6) && parse_burst(buf + 6, &d.burst_ms) == 0)
                ;
            else
                return err_set(EINVAL,
                               "--disk \"%s\": unknown or bad setting \"%s\" (use ro, bw=RATE "
                               "such as 10M, iops=N, burst=MS up to %d)",
                               val, buf, TB_BURST_MS_MAX);
            opts += n;
        }
        l->d[l->n++] = d;
        return 0;
    }
    if (!strcmp(opt, "--net")) {
        /* user[,hostfwd=...][,LIMIT]... or tap:IFNAME[,LIMIT]... (the interface name ends at
         * the first comma, as the disk's path does) */
        d.kind = VDEV_NET;
        const char *opts;
        if (!strncmp(val, "tap:", 4)) {
            d.net = VNET_TAP;
            size_t n = strcspn(val + 4, ",");
            if (n == 0 || n >= sizeof(d.ifname) || memchr(val + 4, '/', n))
                return err_set(EINVAL, "--net \"%s\": expected tap:IFNAME (at most 15 characters)",
                               val);
            memcpy(d.ifname, val + 4, n);
            d.ifname[n] = 0;
            opts = val + 4 + n;
        } else if (!strncmp(val, "user", 4) && (val[4] == 0 || val[4] == ',')) {
            d.net = VNET_USER;
            opts = val + 4;
        } else {
            return err_set(EINVAL,
                           "--net \"%s\": use user[,hostfwd=tcp::HOSTPORT-:GUESTPORT] or "
                           "tap:IFNAME, then rate limits if wanted (" NET_LIMITS_HELP ")",
                           val);
        }
        while (*opts == ',') {
            opts++;
            size_t n = strcspn(opts, ",");
            memcpy(buf, opts, n);
            buf[n] = 0;
            int lim = parse_net_limit(&d, buf);
            if (lim < 0)
                return err_set(EINVAL,
                               "--net \"%s\": bad rate limit \"%s\" (bytes/s with K/M/G such "
                               "as bw=1M, packets/s such as pps=1000, burst=MS from 1 to %d)",
                               val, buf, TB_BURST_MS_MAX);
            if (lim == 0) {
                if (d.net != VNET_USER || strncmp(buf, "hostfwd=", 8) || parse_fwd(&d, buf + 8) < 0)
                    return err_set(EINVAL,
                                   "--net \"%s\": bad setting \"%s\" (use "
                                   "hostfwd=tcp::HOSTPORT-:GUESTPORT (user only, at most %d) or "
                                   "a rate limit: " NET_LIMITS_HELP ")",
                                   val, buf, VNET_MAX_FWD);
            }
            opts += n;
        }
        l->d[l->n++] = d;
        return 0;
    }
    return err_set(EINVAL, "unknown device option %s", opt);
}
