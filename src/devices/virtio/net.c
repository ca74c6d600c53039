/* virtio-net with the libslirp and TAP back ends (see net.h).  Trusts nothing in guest chains;
 * trusts libslirp (Debian's) with the frames the guest sends, which is its purpose.
 *
 * Locking: the transport's lock covers the device, the back end and libslirp (which is not
 * thread-safe): slirp calls, including the send_packet callback that delivers to the guest, all
 * run with it held. */
#include "devices/virtio/net.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <poll.h>
#include <slirp/libslirp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "devices/virtio/ratelimit.h"
#include "util/log.h"

#define RXQ        0
#define TXQ        1
#define BACKLOG    64 /* frames the user back end may queue while the guest has no rx buffers */
#define MAX_TIMERS 32
#define MAX_PFDS   256

/* Ones'-complement sum of p[0..n) as big-endian 16-bit words, added to sum (not folded). */
static uint64_t csum_add(uint64_t sum, const uint8_t *p, size_t n)
{
    for (; n >= 2; p += 2, n -= 2)
        sum += (uint32_t)p[0] << 8 | p[1];
    if (n) sum += (uint32_t)p[0] << 8;
    return sum;
}

static uint16_t csum_fold(uint64_t sum)
{
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    return (uint16_t)sum;
}

long vnet_tx_parse(const struct guest_mem *m, const struct vq_chain *c, uint8_t *buf)
{
    uint8_t hdr[VNET_HDR_LEN];
    if (c->nin || c->out_len < VNET_HDR_LEN + 14 || c->out_len > VNET_HDR_LEN + VNET_MAX_FRAME)
        return -1;
    if (vq_copy_from(m, c, 0, hdr, VNET_HDR_LEN) != VNET_HDR_LEN) return -1;
    /* gso_type must be 0 (no segmentation offload is offered); flags may only ask for a
     * checksum (VIRTIO_NET_F_CSUM) */
    if ((hdr[0] & ~VNET_HDR_F_NEEDS_CSUM) != 0 || hdr[1] != 0) return -1;
    uint64_t len = c->out_len - VNET_HDR_LEN;
    if (vq_copy_from(m, c, VNET_HDR_LEN, buf, len) != (long)len) return -1;
    if (hdr[0] & VNET_HDR_F_NEEDS_CSUM) {
        /* the guest left the pseudo-header sum in the field; the sum over [start, end) with
         * it, complemented, is the checksum (virtio 1.2, 5.1.6.2) */
        uint32_t start = (uint32_t)hdr[6] | (uint32_t)hdr[7] << 8;
        uint32_t off = (uint32_t)hdr[8] | (uint32_t)hdr[9] << 8;
        if ((uint64_t)start + off + 2 > len) return -1;
        uint16_t sum = (uint16_t)~csum_fold(csum_add(0, buf + start, len - start));
        buf[start + off] = (uint8_t)(sum >> 8);
        buf[start + off + 1] = (uint8_t)sum;
    }
    return (long)len;
}

bool vnet_l4_csum_valid(const uint8_t *f, size_t len)
{
    if (len < 14 + 20 || f[12] != 0x08 || f[13] != 0x00) return false; /* IPv4 */
    const uint8_t *ip = f + 14;
    size_t ihl = (size_t)(ip[0] & 15) * 4, tot = (size_t)ip[2] << 8 | ip[3];
    if ((ip[0] >> 4) != 4 || ihl < 20 || tot < ihl || 14 + tot > len) return false;
    if ((ip[6] & 0x3f) || ip[7]) return false; /* MF or a fragment offset: not whole */
    uint8_t proto = ip[9];
    size_t l4len = tot - ihl;
    const uint8_t *l4 = ip + ihl;
    if (proto == 6) {
        if (l4len < 20) return false;
    } else if (proto == 17) {
        if (l4len < 8) return false;
        if (l4[6] == 0 && l4[7] == 0) return true; /* no checksum */
    } else {
        return false;
    }
    uint64_t sum = csum_add(0, ip + 12, 8); /* pseudo-header: addresses, protocol, length */
    sum += proto;
    sum += l4len;
    sum = csum_add(sum, l4, l4len);
    return csum_fold(sum) == 0xffff;
}

long vnet_rx_fill(struct guest_mem *m, const struct vq_chain *c, const uint8_t *frame, size_t len)
{
    return vnet_rx_fill_flags(m, c, frame, len, 0);
}

long vnet_rx_fill_flags(struct guest_mem *m, const struct vq_chain *c, const uint8_t *frame,
                        size_t len, uint8_t flags)
{
    if (c->nout || len > VNET_MAX_FRAME || c->in_len < VNET_HDR_LEN + len) return -1;
    uint8_t hdr[VNET_HDR_LEN] = {0};
    hdr[0] = flags;
    hdr[10] = 1; /* num_buffers = 1 */
    if (vq_copy_to(m, c, 0, hdr, VNET_HDR_LEN) != VNET_HDR_LEN) return -1;
    if (len && vq_copy_to(m, c, VNET_HDR_LEN, frame, len) != (long)len) return -1;
    return (long)(VNET_HDR_LEN + len);
}

struct slirp_timer {
    bool used;
    SlirpTimerCb cb;
    void *cb_opaque;
    int64_t expire_ms; /* -1: not armed */
};

struct virtio_net {
    struct virtio_mmio t;
    struct virtio_dev_ops ops;
    uint8_t config[10]; /* mac[6], status, max_virtqueue_pairs */
    enum vnet_backend kind;
    char ifname[17]; /* tap */
    int tap_fd, wake_fd;
    Slirp *slirp;
    struct slirp_timer timers[MAX_TIMERS];
    struct pollfd pfd[MAX_PFDS];
    unsigned npfd;
    pthread_t thread;
    bool stop, started;
    struct {
        uint8_t *data;
        size_t len;
    } backlog[BACKLOG];
    unsigned bl_head, bl_len;
    struct vq_chain chain;
    /* rate limits (spec->rx_bw...): rx = to the guest, tx = from it.  tx_due_ns != 0 while
     * transmit is throttled: the poll thread re-runs it then (the guest's kick has been used). */
    struct tbucket rx_bw, rx_pps, tx_bw, tx_pps;
    uint64_t tx_due_ns;
    uint64_t n_rx, n_tx, n_rx_dropped, n_backlogged; /* counters, logged at exit (debug) */
    uint8_t frame[VNET_MAX_FRAME];                   /* tx, with t.lock held */
    uint8_t rxframe[VNET_MAX_FRAME];                 /* tap rx, poll thread */
};

static void wake(struct virtio_net *d)
{
    uint64_t one = 1;
    if (write(d->wake_fd, &one, 8) < 0) { /* counter saturated: the thread is awake anyway */
    }
}

/* ns until the receive limits allow the next frame to the guest (0: now). */
static uint64_t rx_wait(struct virtio_net *d, uint64_t now)
{
    return MAX(tb_wait_ns(&d->rx_bw, now), tb_wait_ns(&d->rx_pps, now));
}

static uint64_t tx_wait(struct virtio_net *d, uint64_t now)
{
    return MAX(tb_wait_ns(&d->tx_bw, now), tb_wait_ns(&d->tx_pps, now));
}

/* poll() timeout in ms for a wait in ns, rounded up so a throttled thread does not spin. */
static int wait_ms(uint64_t ns)
{
    uint64_t ms = (ns + 999999) / 1000000;
    return (int)MIN(ms, 1000u);
}

/* With t.lock held: one frame to the guest.  true if delivered (or dropped as malformed). */
static bool deliver(struct virtio_net *d, const uint8_t *frame, size_t len)
{
    if (!virtio_mmio_running(&d->t) || !d->t.vq[RXQ].ready) return true; /* link down: drop */
    int r = virtio_mmio_pop(&d->t, RXQ, &d->chain);
    if (r <= 0) return r < 0; /* no buffer: the caller queues; broken queue: drop */
    /* a checksum verified here (natively) need not be verified again by the guest's stack */
    uint8_t flags = 0;
    if ((d->t.drv_features & (1ull << VIRTIO_NET_F_GUEST_CSUM)) && vnet_l4_csum_valid(frame, len))
        flags = VNET_HDR_F_DATA_VALID;
    long n = vnet_rx_fill_flags(d->t.mem, &d->chain, frame, len, flags);
    virtio_mmio_push(&d->t, RXQ, d->chain.head, n < 0 ? 0 : (uint32_t)n);
    if (n >= 0) {
        d->n_rx++;
        tb_charge(&d->rx_bw, len);
        tb_charge(&d->rx_pps, 1);
    }
    return true;
}

/* Queues a copy of a frame the guest cannot take yet (no buffer, or over its receive limit).
 * false if the backlog is full (the frame is dropped, as a full switch queue would). */
static bool backlog_add(struct virtio_net *d, const uint8_t *frame, size_t len)
{
    if (d->bl_len >= BACKLOG || len > VNET_MAX_FRAME) {
        d->n_rx_dropped++;
        return false;
    }
    d->n_backlogged++;
    uint8_t *copy = malloc(len ? len : 1);
    if (!copy) return false;
    memcpy(copy, frame, len);
    unsigned i = (d->bl_head + d->bl_len) % BACKLOG;
    d->backlog[i].data = copy;
    d->backlog[i].len = len;
    d->bl_len++;
    return true;
}

static void drain_backlog(struct virtio_net *d)
{
    while (d->bl_len && !rx_wait(d, tb_now_ns())) {
        unsigned i = d->bl_head;
        if (!deliver(d, d->backlog[i].data, d->backlog[i].len)) return;
        free(d->backlog[i].data);
        d->backlog[i].data = NULL;
        d->bl_head = (d->bl_head + 1) % BACKLOG;
        d->bl_len--;
    }
}

/* ---- libslirp callbacks (t.lock held: they run inside slirp calls) ---- */

static ssize_t cb_send_packet(const void *buf, size_t len, void *opaque)
{
    struct virtio_net *d = opaque;
    drain_backlog(d);
    if (d->bl_len == 0 && !rx_wait(d, tb_now_ns()) && deliver(d, buf, len)) return (ssize_t)len;
    backlog_add(d, buf, len); /* dropped when full: TCP retransmits, DHCP retries */
    return (ssize_t)len;
}

static void cb_guest_error(const char *msg, void *opaque)
{
    log_warn("virtio-net (user): the guest sent something slirp rejects: %s", msg);
}

static int64_t cb_clock_ns(void *opaque)
{
    return (int64_t)tb_now_ns();
}

static void *cb_timer_new(SlirpTimerCb cb, void *cb_opaque, void *opaque)
{
    struct virtio_net *d = opaque;
    for (unsigned i = 0; i < MAX_TIMERS; i++) {
        if (!d->timers[i].used) {
            d->timers[i] = (struct slirp_timer){true, cb, cb_opaque, -1};
            return &d->timers[i];
        }
    }
    log_err("virtio-net (user): out of timers");
    return NULL;
}

static void cb_timer_free(void *timer, void *opaque)
{
    if (timer) ((struct slirp_timer *)timer)->used = false;
}

static void cb_timer_mod(void *timer, int64_t expire_ms, void *opaque)
{
    struct virtio_net *d = opaque;
    if (!timer) return;
    ((struct slirp_timer *)timer)->expire_ms = expire_ms;
    wake(d);
}

static void cb_register_fd(int fd, void *opaque) {}

static void cb_notify(void *opaque)
{
    wake(opaque);
}

static int cb_add_poll(int fd, int events, void *opaque)
{
    struct virtio_net *d = opaque;
    if (d->npfd >= MAX_PFDS) return -1;
    short ev = 0;
    if (events & SLIRP_POLL_IN) ev |= POLLIN;
    if (events & SLIRP_POLL_OUT) ev |= POLLOUT;
    if (events & SLIRP_POLL_PRI) ev |= POLLPRI;
    d->pfd[d->npfd] = (struct pollfd){.fd = fd, .events = ev};
    return (int)d->npfd++;
}

static int cb_get_revents(int idx, void *opaque)
{
    struct virtio_net *d = opaque;
    if (idx < 0 || (unsigned)idx >= d->npfd) return 0;
    short re = d->pfd[idx].revents;
    int r = 0;
    if (re & POLLIN) r |= SLIRP_POLL_IN;
    if (re & POLLOUT) r |= SLIRP_POLL_OUT;
    if (re & POLLPRI) r |= SLIRP_POLL_PRI;
    if (re & POLLERR) r |= SLIRP_POLL_ERR;
    if (re & POLLHUP) r |= SLIRP_POLL_HUP;
    return r;
}

static const SlirpCb slirp_cbs = {
    .send_packet = cb_send_packet,
    .guest_error = cb_guest_error,
    .clock_get_ns = cb_clock_ns,
    .timer_new = cb_timer_new,
    .timer_free = cb_timer_free,
    .timer_mod = cb_timer_mod,
    .register_poll_fd = cb_register_fd,
    .unregister_poll_fd = cb_register_fd,
    .notify = cb_notify,
};

/* ---- poll thread ---- */

static void run_timers(struct virtio_net *d, int64_t now_ms)
{
    for (unsigned i = 0; i < MAX_TIMERS; i++) {
        struct slirp_timer *tm = &d->timers[i];
        if (tm->used && tm->expire_ms >= 0 && tm->expire_ms <= now_ms) {
            tm->expire_ms = -1;
            tm->cb(tm->cb_opaque);
        }
    }
}

static void tx_run(struct virtio_net *d);

static void *net_thread(void *arg)
{
    struct virtio_net *d = arg;
    pthread_mutex_lock(&d->t.lock);
    while (!d->stop) {
        int timeout = 1000;
        uint64_t now = tb_now_ns();
        if (d->tx_due_ns) timeout = wait_ms(d->tx_due_ns > now ? d->tx_due_ns - now : 0);
        uint64_t rxw = rx_wait(d, now);
        if (d->bl_len && rxw) timeout = MIN(timeout, wait_ms(rxw));
        d->npfd = 0;
        cb_add_poll(d->wake_fd, SLIRP_POLL_IN, d);
        if (d->kind == VNET_USER) {
            uint32_t to = 1000;
            slirp_pollfds_fill(d->slirp, &to, cb_add_poll, d);
            timeout = (int)MIN((uint32_t)timeout, to);
            int64_t now_ms = (int64_t)(tb_now_ns() / 1000000);
            for (unsigned i = 0; i < MAX_TIMERS; i++) {
                const struct slirp_timer *tm = &d->timers[i];
                if (tm->used && tm->expire_ms >= 0)
                    timeout = (int)MIN((int64_t)timeout, MAX(tm->expire_ms - now_ms, 0));
            }
        } else {
            /* read the TAP only while the guest has somewhere to put frames and its receive
             * limit allows: meanwhile they wait in the kernel's queue */
            bool room =
                virtio_mmio_running(&d->t) && d->t.vq[RXQ].ready && !d->t.quiesced && !d->bl_len;
            if (room && rxw) {
                room = false;
                timeout = MIN(timeout, wait_ms(rxw));
            }
            cb_add_poll(d->tap_fd, room ? SLIRP_POLL_IN : 0, d);
        }
        unsigned n = d->npfd;
        pthread_mutex_unlock(&d->t.lock);
        int pr = poll(d->pfd, n, timeout);
        pthread_mutex_lock(&d->t.lock);
        if (d->stop) break;
        if (pr > 0 && (d->pfd[0].revents & POLLIN)) {
            uint64_t v;
            if (read(d->wake_fd, &v, 8) < 0) { /* EAGAIN: nothing to clear */
            }
        }
        if (d->tx_due_ns && tb_now_ns() >= d->tx_due_ns) tx_run(d);
        if (d->kind == VNET_USER) {
            slirp_pollfds_poll(d->slirp, pr < 0, cb_get_revents, d);
            run_timers(d, (int64_t)(tb_now_ns() / 1000000));
            drain_backlog(d);
        } else {
            drain_backlog(d);
            if (pr > 0 && (d->pfd[1].revents & POLLIN)) {
                for (unsigned k = 0; k < 64 && !d->bl_len && !rx_wait(d, tb_now_ns()); k++) {
                    ssize_t r = read(d->tap_fd, d->rxframe, sizeof(d->rxframe));
                    if (r <= 0) break;
                    if (!deliver(d, d->rxframe, (size_t)r)) /* no buffer: keep it for later */
                        backlog_add(d, d->rxframe, (size_t)r);
                }
            }
        }
    }
    pthread_mutex_unlock(&d->t.lock);
    return NULL;
}

/* ---- device ops (t.lock held, vCPU thread) ---- */

/* With t.lock held (a vCPU's kick, or the poll thread when a throttle expires): sends what
 * the guest queued.  Over the transmit limit it stops before popping the next chain (the guest
 * waits for its buffers, nothing is dropped) and leaves tx_due_ns for the poll thread. */
static void tx_run(struct virtio_net *d)
{
    d->tx_due_ns = 0;
    for (unsigned i = 0; i < VQ_MAX_SIZE; i++) {
        uint64_t now = tb_now_ns(), w = tx_wait(d, now);
        if (w) {
            d->tx_due_ns = now + w;
            break;
        }
        if (virtio_mmio_pop(&d->t, TXQ, &d->chain) <= 0) break;
        long len = vnet_tx_parse(d->t.mem, &d->chain, d->frame);
        virtio_mmio_push(&d->t, TXQ, d->chain.head, 0);
        if (len < 0) continue;
        tb_charge(&d->tx_bw, (uint64_t)len);
        tb_charge(&d->tx_pps, 1);
        d->n_tx++;
        if (d->kind == VNET_USER) {
            slirp_input(d->slirp, d->frame, (int)len);
        } else if (write(d->tap_fd, d->frame, (size_t)len) < 0) {
            /* EAGAIN/ENOBUFS: dropped, as a congested wire would */
        }
    }
    /* user: new sockets/timers changed the poll set; either: a throttle deadline to wait for */
    if (d->kind == VNET_USER || d->tx_due_ns) wake(d);
}

static void net_notify(void *dev, unsigned q)
{
    struct virtio_net *d = dev;
    if (q == RXQ) {
        drain_backlog(d);
        wake(d);
        return;
    }
    if (q == TXQ) tx_run(d);
}

static void net_config_read(void *dev, uint32_t off, uint8_t *data, unsigned len)
{
    struct virtio_net *d = dev;
    memcpy(data, d->config + off, len);
}

static void net_reset(void *dev)
{
    struct virtio_net *d = dev;
    d->tx_due_ns = 0;
    while (d->bl_len) {
        free(d->backlog[d->bl_head].data);
        d->backlog[d->bl_head].data = NULL;
        d->bl_head = (d->bl_head + 1) % BACKLOG;
        d->bl_len--;
    }
}

static int open_tap(const char *ifname)
{
    int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return err_set(errno,
                       "cannot open /dev/net/tun for tap:%s: %s (needs CAP_NET_ADMIN or a "
                       "TAP device owned by you; try --net user)",
                       ifname, strerror(errno));
    struct ifreq ifr;
    memset(&ifr, 0, sizeof(ifr));
    ifr.ifr_flags = IFF_TAP | IFF_NO_PI;
    memcpy(ifr.ifr_name, ifname, strnlen(ifname, IFNAMSIZ - 1));
    if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
        int e = errno;
        close(fd);
        return err_set(e,
                       "cannot attach to TAP interface %s: %s (create it with `ip tuntap add "
                       "%s mode tap user $USER`)",
                       ifname, strerror(e), ifname);
    }
    return fd;
}

struct virtio_net *virtio_net_create(struct guest_mem *mem, struct irq_line irq,
                                     const struct vdev_spec *spec, unsigned slot)
{
    struct virtio_net *d = calloc(1, sizeof(*d));
    if (!d) {
        err_set(ENOMEM, "out of memory");
        return NULL;
    }
    d->kind = spec->net;
    if (d->kind == VNET_TAP) snprintf(d->ifname, sizeof(d->ifname), "%s", spec->ifname);
    d->tap_fd = -1;
    d->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (d->wake_fd < 0) {
        err_set(errno, "eventfd: %s", strerror(errno));
        free(d);
        return NULL;
    }
    static const uint8_t mac[6] = {0x52, 0x54, 0x00, 0x12, 0x34, 0x56};
    memcpy(d->config, mac, 6);
    d->config[5] = (uint8_t)(0x56 + slot);
    d->config[6] = 1; /* status: VIRTIO_NET_S_LINK_UP */
    tb_init_burst(&d->rx_bw, spec->rx_bw, spec->burst_ms);
    tb_init_burst(&d->rx_pps, spec->rx_pps, spec->burst_ms);
    tb_init_burst(&d->tx_bw, spec->tx_bw, spec->burst_ms);
    tb_init_burst(&d->tx_pps, spec->tx_pps, spec->burst_ms);
    d->ops = (struct virtio_dev_ops){.device_id = VIRTIO_ID_NET,
                                     .nqueues = 2,
                                     .config_size = sizeof(d->config),
                                     .config_read = net_config_read,
                                     .notify = net_notify,
                                     .reset = net_reset};
    virtio_mmio_init(&d->t, mem, irq, &d->ops, d,
                     (1ull << VIRTIO_NET_F_CSUM) | (1ull << VIRTIO_NET_F_GUEST_CSUM) |
                         (1ull << VIRTIO_NET_F_MAC) | (1ull << VIRTIO_NET_F_STATUS));
    if (d->kind == VNET_TAP) {
        int fd = open_tap(spec->ifname);
        if (fd < 0) goto fail;
        d->tap_fd = fd;
    } else {
        SlirpConfig cfg;
        memset(&cfg, 0, sizeof(cfg));
        cfg.version = 4;
        cfg.in_enabled = true;
        inet_pton(AF_INET, "10.0.2.0", &cfg.vnetwork);
        inet_pton(AF_INET, "255.255.255.0", &cfg.vnetmask);
        inet_pton(AF_INET, "10.0.2.2", &cfg.vhost);
        inet_pton(AF_INET, "10.0.2.15", &cfg.vdhcp_start);
        inet_pton(AF_INET, "10.0.2.3", &cfg.vnameserver);
        cfg.vhostname = "lookout";
        d->slirp = slirp_new(&cfg, &slirp_cbs, d);
        if (!d->slirp) {
            err_set(EIO, "libslirp could not start the user network");
            goto fail;
        }
        for (unsigned i = 0; i < spec->nfwd; i++) {
            const struct vnet_fwd *f = &spec->fwd[i];
            struct in_addr host = {htonl(f->host_addr ? f->host_addr : INADDR_LOOPBACK)};
            struct in_addr guest;
            inet_pton(AF_INET, "10.0.2.15", &guest);
            if (slirp_add_hostfwd(d->slirp, f->udp, host, f->host_port, guest, f->guest_port) < 0) {
                err_set(EADDRINUSE, "--net user: cannot forward host port %u (in use?)",
                        f->host_port);
                goto fail;
            }
        }
    }
    int e = pthread_create(&d->thread, NULL, net_thread, d);
    if (e) {
        err_set(e, "cannot start the network thread: %s", strerror(e));
        goto fail;
    }
    d->started = true;
    return d;
fail:
    virtio_net_destroy(d);
    return NULL;
}

struct virtio_mmio *virtio_net_transport(struct virtio_net *d)
{
    return &d->t;
}

void virtio_net_destroy(struct virtio_net *d)
{
    if (!d) return;
    if (d->started) {
        pthread_mutex_lock(&d->t.lock);
        d->stop = true;
        pthread_mutex_unlock(&d->t.lock);
        wake(d);
        pthread_join(d->thread, NULL);
    }
    log_debug("virtio-net: %llu frames to the guest (%llu waited in the backlog, %llu dropped "
              "with it full), %llu from it",
              (unsigned long long)d->n_rx, (unsigned long long)d->n_backlogged,
              (unsigned long long)d->n_rx_dropped, (unsigned long long)d->n_tx);
    net_reset(d);
    if (d->slirp) slirp_cleanup(d->slirp);
    if (d->tap_fd >= 0) close(d->tap_fd);
    close(d->wake_fd);
    virtio_mmio_destroy(&d->t);
    free(d);
}

void virtio_net_get_state(struct virtio_net *d, struct virtio_dev_state *s)
{
    memset(s, 0, sizeof(*s));
    s->device_id = VIRTIO_ID_NET;
    s->nqueues = (uint8_t)d->ops.nqueues;
    virtio_mmio_get_state(&d->t, &s->mmio);
    pthread_mutex_lock(&d->t.lock);
    s->config_len = sizeof(d->config);
    memcpy(s->config, d->config, sizeof(d->config));
    const struct tbucket *tb[4] = {&d->rx_bw, &d->rx_pps, &d->tx_bw, &d->tx_pps};
    s->nbuckets = 4;
    for (int k = 0; k < 4; k++) {
        s->bucket[k].rate = tb[k]->rate;
        s->bucket[k].milli = tb_level_milli(tb[k]);
    }
    pthread_mutex_unlock(&d->t.lock);
    s->net.backend = (uint8_t)d->kind;
    snprintf(s->net.ifname, sizeof(s->net.ifname), "%s", d->ifname);
}

int virtio_net_check_state(struct virtio_net *d, const struct virtio_dev_state *s)
{
    if (s->device_id != VIRTIO_ID_NET || s->nqueues != d->ops.nqueues)
        return err_set(EINVAL, "not a NIC's state (device id %u, %u queues)", s->device_id,
                       s->nqueues);
    if (s->config_len != sizeof(d->config))
        return err_set(EINVAL, "config space of %u bytes, a NIC has %zu", s->config_len,
                       sizeof(d->config));
    if (s->config[0] & 1) return err_set(EINVAL, "multicast MAC address");
    if (s->config[6] & ~1u) return err_set(EINVAL, "link status %#x", s->config[6]);
    if (s->config[8] || s->config[9])
        return err_set(EINVAL, "max_virtqueue_pairs set (no multiqueue)");
    if (s->nbuckets != 0 && s->nbuckets != 4) /* 0: a snapshot from before the NIC's limits */
        return err_set(EINVAL, "%u rate buckets, a NIC has 4", s->nbuckets);
    if (s->net.backend > VNET_TAP) return err_set(EINVAL, "back end %u", s->net.backend);
    if (s->net.backend != d->kind)
        log_info("virtio-net: the snapshot's NIC used %s, this one %s",
                 s->net.backend == VNET_TAP ? "tap" : "user", d->kind == VNET_TAP ? "tap" : "user");
    return virtio_mmio_check_state(&d->t, &s->mmio);
}

int virtio_net_set_state(struct virtio_net *d, const struct virtio_dev_state *s)
{
    int r = virtio_net_check_state(d, s);
    if (r < 0) return r;
    if ((r = virtio_mmio_set_state(&d->t, &s->mmio)) < 0) return r;
    pthread_mutex_lock(&d->t.lock);
    memcpy(d->config, s->config, sizeof(d->config));
    if (s->nbuckets == 4) { /* levels carried over where this NIC has the same rates */
        struct tbucket *tb[4] = {&d->rx_bw, &d->rx_pps, &d->tx_bw, &d->tx_pps};
        for (int k = 0; k < 4; k++)
            tb_restore(tb[k], s->bucket[k].rate, s->bucket[k].milli);
    }
    net_reset(d); /* frames queued for the guest we replaced are not for this one */
    pthread_mutex_unlock(&d->t.lock);
    wake(d);
    return 0;
}
