/* KVM-specific queries the board needs before the VM exists (the rest is cpu_backend_kvm).
 * Trusts: the host kernel's answers. */
#pragma once
#include <stdbool.h>
#include <stdint.h>

#include "x86/cpuid.h"

/* What KVM can present (KVM_GET_SUPPORTED_CPUID, plus TSC-deadline when KVM emulates it) and the
 * vCPUs' TSC frequency.  Opens /dev/kvm if needed; -errno with err_set() on failure. */
int kvm_query_host(struct cpuid_entry *sup, unsigned max, unsigned *n, uint64_t *tsc_khz);

/* True when /dev/kvm is kvm_pvm (no VMX/SVM: supervisor code runs in KVM's instruction emulator,
 * about a million instructions per second), so the software CPU is the faster choice.  Also: on
 * such a host without CPUID faulting the guest's CPUID runs natively and shows the host CPU, not
 * the VM's CPUID model (seen on these machines: XSAVE/AVX visible, hence XRSTOR failures). */
bool kvm_is_software_virt(void);

struct vm;
/* The VM clock of the KVM backend's neutral PIT state (ns since the VM was created), so a
 * snapshot can rebase timer load times between backends. */
int64_t kvm_vm_clock_ns(struct vm *vm);
