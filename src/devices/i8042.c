/* i8042 controller without devices (see i8042.h).  Trusts: nothing; unknown commands are
 * ignored (logged at debug level), as a real controller ignores them. */
#include "devices/i8042.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>

#include "cpu/cpu.h"
#include "devices/devutil.h"
#include "machine/layout.h"
#include "util/log.h"

#define STS_OBF     0x01 /* output buffer full: data for the host at 0x60 */
#define STS_IBF     0x02 /* input buffer full: never, writes are consumed at once */
#define STS_SYS     0x04 /* system flag: set after a successful self-test */
#define STS_CMD     0x08 /* last write was to the command port */
#define STS_AUXDATA 0x20 /* the byte in the output buffer comes from the aux port */
#define STS_TIMEOUT 0x40

/* ISA IRQs 1 and 12, identity-mapped to GSIs like every ISA IRQ but 0 on this board. */
#define GSI_I8042_KBD 1
#define GSI_I8042_AUX 12

#define CTR_KBDINT 0x01
#define CTR_AUXINT 0x02
#define CTR_SYS    0x04
#define CTR_KBDDIS 0x10
#define CTR_AUXDIS 0x20
#define CTR_XLATE  0x40

struct i8042 {
    pthread_mutex_t lock;
    struct vm *vm;
    uint8_t status, ctr, outport;
    uint8_t out;         /* the output buffer, valid when STS_OBF */
    uint8_t pending_cmd; /* command waiting for its data byte at 0x60, or 0 */
    struct irq_line kbd_irq, aux_irq;
    bool kbd_level, aux_level;
};

/* IRQ 1 while the output buffer holds keyboard-side data and the command byte enables it; IRQ 12
 * likewise for aux data.  Called with the lock held so level changes stay in order. */
static void update_irq(struct i8042 *k)
{
    bool full = k->status & STS_OBF, aux = k->status & STS_AUXDATA;
    bool kbd_level = full && !aux && (k->ctr & CTR_KBDINT);
    bool aux_level = full && aux && (k->ctr & CTR_AUXINT);
    if (kbd_level != k->kbd_level) irq_line_set(&k->kbd_irq, k->kbd_level = kbd_level);
    if (aux_level != k->aux_level) irq_line_set(&k->aux_irq, k->aux_level = aux_level);
}

static void reply(struct i8042 *k, uint8_t v, bool aux)
{
    k->out = v;
    k->status =
        (uint8_t)((k->status & ~(STS_AUXDATA | STS_TIMEOUT)) | STS_OBF | (aux ? STS_AUXDATA : 0));
}

static void device_absent(struct i8042 *k, bool aux)
{
    reply(k, 0xfe, aux);
    k->status |= STS_TIMEOUT;
}

static void command(struct i8042 *k, uint8_t cmd)
{
    k->status |= STS_CMD;
    switch (cmd) {
    case 0x20: reply(k, k->ctr, false); break;
    case 0x60:
    case 0xd1:
    case 0xd2:
    case 0xd3:
    case 0xd4: k->pending_cmd = cmd; break;
    case 0xa7: k->ctr |= CTR_AUXDIS; break;
    case 0xa8: k->ctr &= ~CTR_AUXDIS; break;
    case 0xa9: reply(k, 0x00, false); break;
    case 0xaa:
        k->status |= STS_SYS;
        k->ctr |= CTR_SYS;
        reply(k, 0x55, false);
        break;
    case 0xab: reply(k, 0x00, false); break;
    case 0xad: k->ctr |= CTR_KBDDIS; break;
    case 0xae: k->ctr &= ~CTR_KBDDIS; break;
    case 0xd0: reply(k, k->outport, false); break;
    default:
        if (cmd >= 0xf0 && !(cmd & 1)) { /* pulse output lines; bit 0 low = pulse reset */
            log_info("i8042: guest pulsed the reset line");
            vm_request_stop(k->vm, VM_STOP_RESET, 0);
        } else {
            log_debug("i8042: ignoring controller command %#x", cmd);
        }
    }
}

static void data_write(struct i8042 *k, uint8_t v)
{
    uint8_t cmd = k->pending_cmd;
    k->pending_cmd = 0;
    k->status &= ~STS_CMD;
    switch (cmd) {
    case 0x60:
        k->ctr = v;
        if (v & CTR_SYS)
            k->status |= STS_SYS;
        else
            k->status &= ~STS_SYS;
        break;
    case 0xd1:
        k->outport = v;
        if (!(v & 1)) { /* output port bit 0 is the CPU reset line (active low) */
            log_info("i8042: guest cleared the reset bit of the output port");
            vm_request_stop(k->vm, VM_STOP_RESET, 0);
        }
        break;
    case 0xd2: reply(k, v, false); break;
    case 0xd3: reply(k, v, true); break;
    case 0xd4: device_absent(k, true); break;
    default: device_absent(k, false); break; /* a byte for the (absent) keyboard */
    }
}

/* Ports 0x60 and 0x64 are two one-byte ranges (0x61-0x63 belong to others), so each has its own
 * ops table: the bus offset is 0 for both. */
static void data_read(void *opaque, uint64_t offset, uint8_t *data, unsigned size)
{
    struct i8042 *k = opaque;
    pthread_mutex_lock(&k->lock);
    data[0] = k->out;
    k->status &= ~(STS_OBF | STS_AUXDATA | STS_TIMEOUT);
    update_irq(k);
    for (unsigned i = 1; i < size; i++)
        data[i] = 0xff;
    pthread_mutex_unlock(&k->lock);
}

static void status_read(void *opaque, uint64_t offset, uint8_t *data, unsigned size)
{
    struct i8042 *k = opaque;
    pthread_mutex_lock(&k->lock);
    data[0] = k->status;
    for (unsigned i = 1; i < size; i++)
        data[i] = 0xff;
    pthread_mutex_unlock(&k->lock);
}

static void data_port_write(void *opaque, uint64_t offset, const uint8_t *data, unsigned size)
{
    struct i8042 *k = opaque;
    pthread_mutex_lock(&k->lock);
    data_write(k, data[0]);
    update_irq(k);
    pthread_mutex_unlock(&k->lock);
}

static void cmd_port_write(void *opaque, uint64_t offset, const uint8_t *data, unsigned size)
{
    struct i8042 *k = opaque;
    pthread_mutex_lock(&k->lock);
    command(k, data[0]);
    update_irq(k);
    pthread_mutex_unlock(&k->lock);
}

static const struct bus_ops data_ops = {.read = data_read, .write = data_port_write};
static const struct bus_ops cmd_ops = {.read = status_read, .write = cmd_port_write};

int i8042_attach(struct vm *vm)
{
    struct i8042 *k = calloc(1, sizeof(*k));
    if (!k) return err_set(ENOMEM, "i8042: out of memory");
    pthread_mutex_init(&k->lock, NULL);
    k->vm = vm;
    k->kbd_irq = (struct irq_line){.set = vm_irq_set, .ctx = vm, .gsi = GSI_I8042_KBD};
    k->aux_irq = (struct irq_line){.set = vm_irq_set, .ctx = vm, .gsi = GSI_I8042_AUX};
    k->ctr = CTR_KBDINT | CTR_AUXINT | CTR_SYS | CTR_XLATE | CTR_AUXDIS;
    k->status = STS_SYS;
    k->outport = 0x01; /* reset line inactive (bit 0 high) */
    int r = bus_register(&vm->pio, PORT_I8042_DATA, 1, &data_ops, k, "i8042-data");
    if (r == 0) {
        r = bus_register(&vm->pio, PORT_I8042_CMD, 1, &cmd_ops, k, "i8042-cmd");
        if (r < 0) dev_unregister(&vm->pio, NULL, k);
    }
    if (r < 0) {
        pthread_mutex_destroy(&k->lock);
        free(k);
        return err_wrap(r, "i8042");
    }
    return 0;
}

static struct i8042 *find_i8042(struct vm *vm)
{
    for (unsigned i = 0; i < vm->pio.n; i++)
        if (vm->pio.r[i].ops == &data_ops) return vm->pio.r[i].opaque;
    err_set(ENODEV, "this VM has no i8042");
    return NULL;
}

int i8042_get_state(struct vm *vm, struct i8042_state *s)
{
    struct i8042 *k = find_i8042(vm);
    if (!k) return -ENODEV;
    pthread_mutex_lock(&k->lock);
    *s = (struct i8042_state){k->status, k->ctr, k->outport, k->out, k->pending_cmd};
    pthread_mutex_unlock(&k->lock);
    return 0;
}

int i8042_set_state(struct vm *vm, const struct i8042_state *s)
{
    struct i8042 *k = find_i8042(vm);
    if (!k) return -ENODEV;
    if (s->status & STS_IBF)
        return err_set(EINVAL, "i8042 state: input buffer full (%#x) never persists", s->status);
    switch (s->pending_cmd) {
    case 0:
    case 0x60:
    case 0xd1:
    case 0xd2:
    case 0xd3:
    case 0xd4: break;
    default:
        return err_set(EINVAL, "i8042 state: %#x is not a command that waits for data",
                       s->pending_cmd);
    }
    pthread_mutex_lock(&k->lock);
    k->status = s->status;
    k->ctr = s->ctr;
    k->outport = s->outport;
    k->out = s->out;
    k->pending_cmd = s->pending_cmd;
    update_irq(k);
    pthread_mutex_unlock(&k->lock);
    return 0;
}

void i8042_detach(struct vm *vm)
{
    for (unsigned i = 0; i < vm->pio.n; i++)
        if (vm->pio.r[i].ops == &data_ops) {
            struct i8042 *k = vm->pio.r[i].opaque;
            dev_unregister(&vm->pio, NULL, k);
            pthread_mutex_destroy(&k->lock);
            free(k);
            return;
        }
}
