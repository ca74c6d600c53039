"""The project's own Multiboot test kernels (tests/guests/, built into build/guests/*.elf).

Their contract (the test-kernel work): each prints to COM1 and ends through the test exit port
0xf4, so lookout exits with (v << 1) | 1, as QEMU's isa-debug-exit does.
  exit42   prints "hello from exit42", writes 42           -> status 85
  smp      starts the APs by INIT-SIPI-SIPI, prints "smp: N cpus up", writes 0 -> status 1
  emufail  runs in ring 0 the instructions kvm_pvm's emulator gives up on (INT3, LOCK CMPXCHG16B,
           XRSTOR, ...), prints its results, writes 0 when every check passed -> status 1
They run under KVM (kvm_pvm runs small kernels fast) and under the software CPU; the `bt` ones
fail until that backend lands (select them with -m bt / deselect with -m "not bt")."""
import pytest

from conftest import run_lookout

BACKENDS = [pytest.param("kvm", marks=pytest.mark.kvm), pytest.param("bt", marks=pytest.mark.bt)]


@pytest.mark.parametrize("cpu", BACKENDS)
def test_exit42(lookout_any, test_kernel, cpu):
    r = run_lookout(lookout_any, "run", "--cpu", cpu, "--kernel", test_kernel("exit42"),
                    timeout=60)
    assert "hello from exit42" in r.out, r
    assert r.rc == 85, r


@pytest.mark.parametrize("cpu", BACKENDS)
def test_exit42_multiboot_cmdline(lookout_any, test_kernel, cpu):
    """--append reaches the Multiboot command line; the kernel must still exit the same way."""
    r = run_lookout(lookout_any, "run", "--cpu", cpu, "--kernel", test_kernel("exit42"),
                    "--append", "foo=bar", timeout=60)
    assert r.rc == 85, r


@pytest.mark.parametrize("cpu", BACKENDS)
@pytest.mark.parametrize("n", [1, 4])
def test_smp(lookout_any, test_kernel, cpu, n):
    r = run_lookout(lookout_any, "run", "--cpu", cpu, "--smp", n, "--kernel", test_kernel("smp"),
                    timeout=60)
    assert f"smp: {n} cpus up" in r.out, r
    assert r.rc == 1, r


@pytest.mark.parametrize("cpu", BACKENDS)
def test_emufail(lookout_any, test_kernel, cpu):
    r = run_lookout(lookout_any, "run", "--cpu", cpu, "--kernel", test_kernel("emufail"),
                    timeout=120)
    assert r.out.strip(), f"emufail printed nothing: {r!r}"
    assert r.rc == 1, r


@pytest.mark.parametrize("cpu", BACKENDS)
def test_first_instruction_timing_line(lookout_any, test_kernel, cpu):
    """bench/boot reads the time to the first guest instruction from this info line."""
    import re
    r = run_lookout(lookout_any, "run", "--cpu", cpu, "--kernel", test_kernel("exit42"),
                    timeout=60, env={"LOOKOUT_LOG": "info"})
    assert r.rc == 85, r
    m = re.search(r"^lookout: info: first guest instruction after ([0-9]+\.[0-9]{3}) ms", r.err,
                  re.M)
    assert m, r
    assert 0 < float(m.group(1)) < 60000, r


@pytest.mark.bt
@pytest.mark.parametrize("jit", ["0", "1"])
@pytest.mark.parametrize("mode,rop,rc,gadget", [
    ("log", 0, 1, False), ("log", 1, 1, True), ("enforce", 0, 1, False),
    ("enforce", 1, 126, False), ("off", 1, 1, True)])
def test_cfi(lookout_any, test_kernel, jit, mode, rop, rc, gadget):
    """--cfi under the software CPU, interpreted (LOOKOUT_BT_JIT=0) and translated: the clean
    user program never counts as a violation; a ROP-style return to a non-call site is logged
    (log), stops the VM before the gadget runs (enforce: status 126), or goes unnoticed (off)."""
    r = run_lookout(lookout_any, "run", "--cpu", "bt", "--cfi", mode, "--kernel",
                    test_kernel("cfi"), "--append", f"rop={rop}", timeout=60,
                    env={"LOOKOUT_BT_JIT": jit})
    assert "cfi: clean run ok" in r.out, r
    assert r.rc == rc, r
    assert ("cfi: ROP gadget ran in user mode" in r.out) == gadget, r
    assert ("control-flow integrity" in r.err) == (rop == 1 and mode != "off"), r
    if rc == 126:
        assert "the VM is stopped before the RET completes" in r.err, r
        assert "cfi: done" not in r.out, r


@pytest.mark.kvm
def test_cfi_kernel_under_kvm(lookout_any, test_kernel):
    """The hardware runs the guest's returns: the gadget runs, the kernel still ends cleanly."""
    r = run_lookout(lookout_any, "run", "--cpu", "kvm", "--kernel", test_kernel("cfi"),
                    "--append", "rop=1", timeout=60)
    assert "cfi: ROP gadget ran in user mode" in r.out, r
    assert r.rc == 1, r


@pytest.mark.bt
def test_translator_env_profile_and_groups(lookout_any, test_kernel):
    """LOOKOUT_BT_PROFILE=1 reports host instructions per guest instruction at exit (info level),
    on a kernel run with probe groups in every block; values the translator does not know are
    named in a warning, and the run goes on with the default."""
    import re
    r = run_lookout(lookout_any, "run", "--cpu", "bt", "--kernel", test_kernel("exit42"),
                    timeout=60, env={"LOOKOUT_LOG": "info", "LOOKOUT_BT_PROFILE": "1",
                                     "LOOKOUT_BT_GROUPS": "all"})
    assert r.rc == 85, r
    assert re.search(r"translator 0 profile: [0-9]+ runs of translated blocks, [0-9]+ guest and "
                     r"[0-9]+ host instructions in them: [0-9.]+ host instructions per guest", r.err), r
    r = run_lookout(lookout_any, "run", "--cpu", "bt", "--kernel", test_kernel("exit42"),
                    timeout=60, env={"LOOKOUT_BT_PROFILE": "3", "LOOKOUT_BT_GROUPS": "yes",
                                     "LOOKOUT_BT_FLAGS_READ": "popf"})
    assert r.rc == 85, r
    assert "LOOKOUT_BT_PROFILE=3 is not 0, 1" in r.err, r
    assert "LOOKOUT_BT_GROUPS=yes is not 0 (off)" in r.err, r
    assert "LOOKOUT_BT_FLAGS_READ=popf is not pushfq or lahf" in r.err, r
