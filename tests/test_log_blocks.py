"""Register blocks, header positions, fragments and the families without a real log.

Every text here is CONSTRUCTED for a unit test (shaped after the kernel's
printk formats), not a real log: real logs live in tests/data/logs/. The
families whose corpus logs are no #DF (no real #DF of theirs was found) have
their #DF tested here: a 5-level paging #DF, a Xen PV #DF, a PVM guest #DF.
"""

import json
from pathlib import Path

import pytest

from dfforensics.core import x86
from dfforensics.core.model import Registers, Verdict
from dfforensics.core.observation import Medium, Observation
from dfforensics.core.verdict import decide
from dfforensics.logs.analysis import analyze_log_text
from dfforensics.logs.consolelog import normalize_lines, parse_log

# CONSTRUCTED: the project's own stack-overflow shape, with a user-entry block in the trace.
OVERFLOW_WITH_USER_BLOCK = """\
[    2.458552] BUG: TASK stack guard page was hit at 00000000 (stack is 00000000..00000000)
[    2.459730] stack guard page: 0000 [#1] SMP
[    2.472348] CPU: 0 PID: 1 Comm: init Tainted: G           O       6.1.192 #1
[    2.472542] RIP: 0010:dftest_recurse.isra.0+0x16/0x3c [dftest]
[    2.473331] RSP: 0018:ffffc9000000fff0 EFLAGS: 00000246
[    2.473763] CS:  0010 DS: 0000 ES: 0000 CR0: 0000000080050033
[    2.473773] CR2: ffffc9000000ffe8 CR3: 0000000000c22000 CR4: 00000000000006b0
[    2.473841] Call Trace:
[    2.474216]  <TASK>
[    2.475605]  dftest_write+0x13f/0x19d [dftest]
[    2.475893]  ksys_write+0x66/0x97
[    2.475900]  entry_SYSCALL_64_after_hwframe+0x63/0xcd
[    2.475910] RIP: 0033:0x47b7a0
[    2.475920] RSP: 002b:00007ffd5a1c3e38 EFLAGS: 00000246 ORIG_RAX: 0000000000000001
[    2.475930]  </TASK>
"""


def test_the_faulting_block_alone_gives_the_double_faults_registers():
    (report,) = parse_log(OVERFLOW_WITH_USER_BLOCK).reports
    assert (report.regs.cs, report.regs.ss) == (0x10, 0x18)
    assert report.regs.rsp == 0xFFFFC9000000FFF0 and report.regs.rip is None
    (user,) = report.nested_blocks
    assert user.where == "user-entry" and (user.regs.cs, user.regs.ss) == (0x33, 0x2B)
    verdict = analyze_log_text(OVERFLOW_WITH_USER_BLOCK)
    assert (verdict.verdict, verdict.df_class.value) == (Verdict.NO_MATCH, "kernel-stack-overflow")


def test_a_block_nested_in_a_section_is_named_by_it():
    text = OVERFLOW_WITH_USER_BLOCK.replace("<TASK>", "<ENTRY_TRAMPOLINE>").replace(
        "</TASK>", "</ENTRY_TRAMPOLINE>")
    (report,) = parse_log(text).reports
    assert [block.where for block in report.nested_blocks] == ["ENTRY_TRAMPOLINE"]


def test_a_title_quoting_the_header_is_not_a_report():
    # CONSTRUCTED: a mail subject and a syzbot title.
    text = "Subject: PANIC: double fault in fixup_bad_iret\n> PANIC: double fault in fixup_bad_iret\n"
    assert parse_log(text).reports == []
    assert analyze_log_text(text).verdict is Verdict.NO_DOUBLE_FAULT


def test_a_header_alone_is_possible_and_says_what_is_missing():
    report = analyze_log_text("[  812.717699] PANIC: double fault, error_code: 0x0\n"
                              "[  812.722477] CPU: 1 PID: 0 Comm: swapper/1 Not tainted 4.20.0+ #1\n")
    assert (report.verdict, report.df_class) == (Verdict.POSSIBLE, None)
    assert any(e.check == "registers-in-log" and "nothing after the header" in e.detail
               for e in report.evidence)


def test_an_elided_dump_says_the_reporter_elided_it():
    report = analyze_log_text("traps: PANIC: double fault, error_code: 0x0\n[snip]\n"
                              "RIP: 0010:perf_swevent_get_recursion_context+0x0/0x70\n[snip]\n")
    assert (report.verdict, report.df_class) == (Verdict.POSSIBLE, None)
    assert "RSP" in report.summary


def test_a_capture_kernel_booting_is_not_no_double_fault():
    text = "[    0.000000] Command line: console=ttyS0 irqpoll nr_cpus=1 elfcorehdr=245108K\n"
    report = analyze_log_text(text)
    assert (report.verdict, report.df_class) == (Verdict.POSSIBLE, None)


def test_quoted_printable_and_no_break_spaces_are_decoded():
    text = ("Content-Transfer-Encoding: quoted-printable\n\n"
            "[   20.314738] RIP: 0010:error_entry+0x32/0x100=C2=A0\n"
            "[   20.317911] RAX: 0000000092400a87 RBX: 0000000000000000 RCX: 000000000=\n0000000\n")
    lines = normalize_lines(text)
    assert "RIP: 0010:error_entry+0x32/0x100" in lines
    assert "RAX: 0000000092400a87 RBX: 0000000000000000 RCX: 0000000000000000" in lines


def test_old_jiffies_timestamps_and_interleaved_output_are_split():
    assert normalize_lines("[4294730:255000] double fault: 0000 [1] SMP") == ["double fault: 0000 [1] SMP"]
    assert normalize_lines("[RUN]\tM[   20.305426] PANIC: double fault, error_code: 0x0")[1] == (
        "PANIC: double fault, error_code: 0x0")


def _obs(kernel_pointers: tuple[int, ...] = (), **regs: int) -> Observation:
    return Observation(medium=Medium.LOG, regs=Registers(**regs), environment="guest",
                       kernel_pointers=kernel_pointers)


def test_xen_pv_kernel_selectors_are_not_an_impossible_ss():
    decision = decide(_obs(cs=0xE030, ss=0xE02B, rsp=0xFFFFC90045727A68, cr2=0x6543DBADE250))
    assert decision.verdict is Verdict.NO_MATCH
    assert x86.is_kernel_cs(0xE033) and not x86.is_user_cs(0xE033)


def test_five_level_kernel_rsp_is_neither_wild_nor_user():
    # Under 4-level paging ff11... is non-canonical; with LA57 it is the direct map.
    decision = decide(_obs(cs=0x10, ss=0x18, rsp=0xFF1100010DFB7B78, cr2=0xFF1100010DFB7B68))
    assert decision.df_class is not None and decision.df_class.value == "kernel-stack-overflow"


def test_five_level_user_rsp_above_the_four_level_limit_is_user():
    obs = _obs((0xFF11000119600000,), cs=0x10, ss=0x18, rsp=0x00FF_FFFF_FFFF_F000)
    assert decide(obs).verdict is Verdict.POSSIBLE


def test_kernel_code_on_a_user_stack_names_the_rop_pivot_look_alike():
    decision = decide(_obs(cs=0x10, ss=0x18, rsp=0x7FFF650DF000, cr2=0x7FFF650DEFF8))
    assert decision.verdict is Verdict.POSSIBLE
    assert any(e.check == "not-a-rop-stack-pivot" for e in decision.evidence)


FIXTURES = Path(__file__).parent.parent / "fixtures"
FIXTURE_LOGS = sorted([*FIXTURES.glob("*/console.log"), *FIXTURES.glob("*/vmcore-dmesg.txt")])


@pytest.mark.parametrize("path", FIXTURE_LOGS, ids=[f"{p.parent.name}/{p.name}" for p in FIXTURE_LOGS])
def test_fixture_logs_give_the_fixtures_verdict_class(path: Path):
    expected = json.loads((path.parent / "expected.json").read_text())
    report = analyze_log_text(path.read_text(errors="replace"), str(path))
    if expected["verdict"] in ("match", "possible"):
        # A log never proves; a console that shows only the capture kernel booting cannot name the class.
        assert report.verdict is Verdict.POSSIBLE, report.summary
        assert report.df_class is None or report.df_class.value == expected["df_class"]
    else:
        assert (report.verdict.value, report.df_class.value if report.df_class else None) == (
            expected["verdict"], expected["df_class"]), report.summary


# CONSTRUCTED: a divide error (no #DF) and a capture kernel that printed a WARNING while booting.
DIVIDE_ERROR = """\
[   63.550339] divide_error: 0000 [#1] PREEMPT SMP KASAN
[   63.556240] CPU: 1 PID: 6855 Comm: repro Not tainted 5.9.0-rc8 #0
[   63.575262] RIP: 0010:tabledist.part.0+0x22a/0x2a0
[   63.600477] RSP: 0018:ffffc90000da86d8 EFLAGS: 00010246
"""
CAPTURE_KERNEL_WITH_WARNING = """\
[    0.000000] Command line: BOOT_IMAGE=/vmlinuz ro irqpoll nr_cpus=1 elfcorehdr=867700K
[    1.100000] WARNING: CPU: 0 PID: 1 at drivers/firmware/dmi.c:10 dmi_check+0x1/0x2
"""


def test_a_divide_error_is_named_not_called_no_crash():
    report = analyze_log_text(DIVIDE_ERROR)
    assert report.verdict is Verdict.NO_DOUBLE_FAULT
    assert "divide_error: 0000 [#1]" in report.summary
    # The release comes from the look-alike's own task line.
    assert report.kernel.release == "5.9.0-rc8"


def test_a_warning_names_a_log_but_never_hides_an_unprinted_crash():
    assert "WARNING: inconsistent lock state" in analyze_log_text(
        "[   28.150] WARNING: inconsistent lock state\n").summary
    # The capture kernel's boot WARNING is not the crash: still "possible".
    assert analyze_log_text(CAPTURE_KERNEL_WITH_WARNING).verdict is Verdict.POSSIBLE


def test_a_task_line_wrapped_before_tainted_still_gives_the_release():
    # CONSTRUCTED after a pstore paste whose mail client wrapped the task line.
    text = ("[33685.629] traps: PANIC: double fault, error_code: 0x0\n"
            "[33685.629] CPU: 10 PID: 2118287 Comm: kworker/10:0\n"
            "Tainted: P           OE     5.11.8-051108-generic #202103200636\n"
            "[33685.629] RIP: 0010:__slab_free+0x1/0x2\n"
            "[33685.629] RSP: 0018:ffffc90000cd4000 EFLAGS: 00010046\n")
    report = parse_log(text).reports[0]
    assert (report.release, report.pid, report.comm) == ("5.11.8-051108-generic", 2118287, "kworker/10:0")


def test_a_wrapped_code_line_and_task_line_do_not_end_the_register_dump():
    # CONSTRUCTED after a linux-raid mail whose client wrapped every long line.
    text = ("<0>[ 2086.596361] traps: PANIC: double fault, error_code: 0x0\n"
            "<4>[ 2086.596365] CPU: 40 PID: 0 Comm: swapper/40 Tainted: G\n"
            "OE     5.12.0-rc3-md #1\n"
            "<4>[ 2086.596366] RIP: 0010:__slab_free+0x26/0x380\n"
            "<4>[ 2086.596367] Code: 1f 44 00 00 0f 1f 44 00 00 55 49 89 ca 45 89\n"
            "49 8b 5c\n"
            "<4>[ 2086.596368] RSP: 0018:ffff96fa4d1c8f90 EFLAGS: 00010086\n")
    report = parse_log(text).reports[0]
    assert report.regs.rsp == 0xFFFF96FA4D1C8F90 and report.missing is None
    assert report.release == "5.12.0-rc3-md"


# CONSTRUCTED after the seed report and a quoted LKML mail: mail clients wrap the
# Hardware name line after "PIIX, 1996)," or after "BIOS".
@pytest.mark.parametrize("text, name", [
    ("[459395.776610] Hardware name: QEMU Standard PC (i440FX + PIIX, 1996),\n"
     "BIOS 1.7.5-20140531_083029-gandalf 04/01/2014\n",
     "QEMU Standard PC (i440FX + PIIX, 1996), BIOS 1.7.5-20140531_083029-gandalf 04/01/2014"),
    ("> > [   14.216809] Hardware name: Supermicro SYS-5019S-ML/X11SSH-F, BIOS\n> > 2.2 05/23/2018\n",
     "Supermicro SYS-5019S-ML/X11SSH-F, BIOS 2.2 05/23/2018"),
    # Cut where the next line is a kernel line of its own: nothing to join, nothing dangling kept.
    ("[   14.2] Hardware name: QEMU Standard PC (i440FX + PIIX, 1996),\n[   14.3] RIP: 0010:f+0x1/0x2\n",
     "QEMU Standard PC (i440FX + PIIX, 1996)"),
    ("[   14.2] Hardware name: Supermicro SYS-5019S-ML/X11SSH-F, BIOS\n", "Supermicro SYS-5019S-ML/X11SSH-F"),
    # Whole lines are kept as printed, the next line never joined.
    ("[    1.0] Hardware name: Red Hat KVM, BIOS 0.5.1 01/01/2011\n[    1.1] RIP: 0010:f+0x1/0x2\n",
     "Red Hat KVM, BIOS 0.5.1 01/01/2011"),
])
def test_a_wrapped_hardware_name_is_joined_or_cut_at_its_last_whole_field(text, name):
    assert parse_log(text).hardware_name == name
    header = "[   14.1] PANIC: double fault, error_code: 0x0\n"
    assert parse_log(header + text).reports[0].hardware_name == name


def test_a_2_6_page_fault_oops_is_named_by_its_title_and_gives_its_release():
    # CONSTRUCTED after 2.6.12's i386 die(): no "BUG: " prefix yet, and the
    # release printed on the EFLAGS line instead of a task line.
    text = ("[4294688.655000] Unable to handle kernel NULL pointer dereference at virtual address 00000000\n"
            "[4294688.660000] Oops: 0000 [#1]\n"
            "[4294688.663000] EIP:    0060:[<c077f818>]    Not tainted VLI\n"
            "[4294688.663000] EFLAGS: 00010202   (2.6.12-rc2-fs3) \n")
    report = analyze_log_text(text)
    assert report.verdict is Verdict.NO_DOUBLE_FAULT
    assert "Unable to handle kernel NULL pointer dereference" in report.summary
    assert report.kernel.release == "2.6.12-rc2-fs3"
    # Prose that mentions such an oops is not one.
    assert analyze_log_text("we saw an unable to handle kernel paging request\n").summary.endswith("no crash")


def test_dmesg_human_timestamps_are_stripped():
    # CONSTRUCTED after `dmesg -H` output quoted in a KVM selftest thread.
    lines = normalize_lines("[Apr19 16:16] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:\n"
                            "[  +0.000002] RIP: 0010:pvclock_update_vm_gtod_copy+0xb5/0x200 [kvm]\n")
    assert lines == ["rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:",
                     "RIP: 0010:pvclock_update_vm_gtod_copy+0xb5/0x200 [kvm]"]


# CONSTRUCTED after a Xen dom0 nvme BUG on a Supermicro server: the Hardware name
# is the physical machine's, the e030 selectors say the kernel runs under Xen.
XEN_DOM0_ON_SUPERMICRO = """\
[21061.417998] CPU: 1 PID: 12669 Comm: 62.xvda-0 Not tainted 5.10.0-0.bpo.7-amd64 #1 Debian 5.10.40-1~bpo10+1
[21061.418459] Hardware name: Supermicro Super Server/X11SRM-VF, BIOS 1.2a 02/18/2019
[21061.418922] RIP: e030:nvme_map_data+0x7e0/0x820 [nvme]
[21061.420271] RSP: e02b:ffffc90044797930 EFLAGS: 00010286
"""


def test_xen_pv_selectors_mean_a_hypervisor_runs_beneath_whatever_the_hardware_name():
    facts = parse_log(XEN_DOM0_ON_SUPERMICRO)
    assert (facts.environment, facts.paravirt) == ("guest", "Xen PV")
    assert "Xen" in facts.hypervisor and "Supermicro" in facts.hypervisor
    # Native selectors on the same machine stay bare metal.
    native = XEN_DOM0_ON_SUPERMICRO.replace("e030:", "0010:").replace("e02b:", "0018:")
    assert (parse_log(native).environment, parse_log(native).paravirt) == ("bare-metal", None)


# CONSTRUCTED: a PVM guest's #DF with the signature's marks. The PVM guest kernel
# prints the supervisor CS/SS PVM emulates (0x10/0x18) while the CPU runs it at CPL 3.
PVM_GUEST_DF = """\
[   36.860000] traps: PANIC: double fault, error_code: 0x0
[   36.860001] double fault: 0000 [#1] SMP PTI
[   36.868247] CPU: 0 PID: 274 Comm: victim Not tainted 6.7.0-rc6-virt-pvm-guest+ #55
[   36.870556] Hardware name: Cloud Hypervisor cloud-hypervisor, BIOS 0
[   36.872259] RIP: 0010:error_entry+0x2e/0x140
[   36.878668] RSP: 0018:00007ffd5a1c3e38 EFLAGS: 00010046
[   36.893598] CR2: 00007ffd5a1c3e28 CR3: 00000000041c8003 CR4: 0000000000070ef0
"""


def test_a_pvm_guest_keeps_the_marks_but_not_the_svm_explanation():
    facts = parse_log(PVM_GUEST_DF)
    assert facts.paravirt == "PVM" and facts.environment == "guest"
    report = analyze_log_text(PVM_GUEST_DF)
    assert (report.verdict, report.df_class.value) == (Verdict.POSSIBLE, "cpl-corruption")
    (selectors,) = [e for e in report.evidence if e.check == "paravirtual-selectors"]
    assert selectors.status.value == "n/a" and "CPL 3" in selectors.detail
    text = " ".join(report.explanation)
    assert "PVM" in text and "SS.DPL" not in text
    # The same #DF without the PVM marks keeps the KVM/SVM explanation.
    native = analyze_log_text(PVM_GUEST_DF.replace("-virt-pvm-guest+", "+"))
    assert "SS.DPL" in " ".join(native.explanation)
    assert not any(e.check == "paravirtual-selectors" for e in native.evidence)


def test_the_real_pvm_guest_oops_is_recognised():
    path = Path(__file__).parent / "data" / "logs" / "6.7-pvm-guest-cloud-hypervisor-snapshot-restore-bug.log"
    body = path.read_text().partition("\n\n")[2]
    facts = parse_log(body)
    assert (facts.paravirt, facts.environment) == ("PVM", "guest")


def test_a_guard_page_hit_the_page_fault_handler_caught_is_not_a_double_fault():
    # CONSTRUCTED after 4.9-5.x handle_stack_overflow(): the #PF handler names its
    # own catch "(page fault)", the #DF handler "(double-fault)".
    caught = ("BUG: stack guard page was hit at 000000001ff76a9e "
              "(stack is 0000000095d6f9f7..00000000dd56db03)\n"
              "kernel stack overflow (page fault): 0000 [#1] SMP NOPTI\n"
              "RIP: 0010:unwind_next_frame+0x34e/0x570\n"
              "RSP: 0000:fffffe000221a8f0 EFLAGS: 00010002\n")
    report = analyze_log_text(caught)
    assert report.verdict is Verdict.NO_DOUBLE_FAULT
    assert "kernel stack overflow (page fault)" in report.summary
    df = analyze_log_text(caught.replace("(page fault)", "(double-fault)"))
    assert (df.verdict, df.df_class.value) == (Verdict.NO_MATCH, "kernel-stack-overflow")


def test_markdown_inline_code_lines_and_a_kdump_loaded_task_line():
    # CONSTRUCTED after a GitHub issue that put each console line in backticks, from
    # a kernel with a crash kernel loaded ("Kdump: loaded" before the taint).
    text = ("`[34657.105528] general protection fault: 0000 [#1] PREEMPT SMP NOPTI`\n"
            "`[34657.106109] CPU: 7 PID: 954129 Comm: vcpu0 Kdump: loaded Not tainted 6.7.0-rc6-pvm-alex+ #7`\n"
            "```\n")
    assert normalize_lines(text) == [
        "general protection fault: 0000 [#1] PREEMPT SMP NOPTI",
        "CPU: 7 PID: 954129 Comm: vcpu0 Kdump: loaded Not tainted 6.7.0-rc6-pvm-alex+ #7", "```"]
    report = analyze_log_text(text)
    assert report.kernel.release == "6.7.0-rc6-pvm-alex+"
    assert report.summary.endswith("PREEMPT SMP NOPTI")
    # A PVM host is not a PVM guest.
    assert parse_log(text).paravirt is None


def test_a_xen_pv_cs_line_with_high_bits_still_says_xen():
    # CONSTRUCTED after 5.x Xen PV oopses whose CS line printed "CS:  10000e030".
    text = ("[   92.668675] RIP: 0033:0x7f0837b1a94f\n"
            "[   92.668874] CS:  10000e030 DS: 002b ES: 002b CR0: 0000000080050033\n")
    assert parse_log(text).paravirt == "Xen PV"
    assert parse_log(text.replace("10000e030", "10000e0300")).paravirt is None


# The 7.2 fixture's #DF of a user-mode state (fixtures/cpl0-irq-df-7.2/console.log): the
# kernel prints that state without the control registers, then again, whole, after the trace.
USER_MODE_DF = """\
[  117.148221] traps: PANIC: double fault, error_code: 0x0
[  117.153557] Oops: double fault: 0000 [#1] SMP
[  117.154086] CPU: 0 UID: 0 PID: 37 Comm: victim Tainted: G           O        7.2.13 #1 PREEMPTLAZY
[  117.154322] RIP: 0033:0x100018e4
[  117.154607] RSP: 002b:00007ffd61b75008 EFLAGS: 00000246
[  117.154876] RAX: 0000000000000000 RBX: 00007ffd61b957e8 RCX: 0000000000000000
[  117.154936] FS:  0000000031fe8380 GS:  0000000000000000
[  117.155297] ---[ end trace 0000000000000000 ]---
[  117.155406] RIP: 0033:0x100018e4
[  117.155413] RSP: 002b:00007ffd61b75008 EFLAGS: 00000246
[  117.155419] RAX: 0000000000000000 RBX: 00007ffd61b957e8 RCX: 0000000000000000
[  117.155471] CS:  0033 DS: 0000 ES: 0000 CR0: 0000000080050033
[  117.155479] CR2: 00007ffd61b74ff8 CR3: 0000000000ec3000 CR4: 00000000000006b0
[  117.155587] Kernel panic - not syncing: Fatal exception in interrupt
"""


def test_cr2_of_a_user_mode_state_comes_from_its_repeat_after_the_trace():
    report = analyze_log_text(USER_MODE_DF)
    assert report.double_faults[0].regs.cr2 == 0x7FFD61B74FF8
    assert any(e.check == "cr2-at-first-push-slot" and e.status.value == "pass"
               for e in report.double_faults[0].evidence)


def test_a_repeat_of_another_state_lends_no_cr2():
    other = USER_MODE_DF.replace("RSP: 002b:00007ffd61b75008 EFLAGS: 00000246\n[  117.155419]",
                                 "RSP: 002b:00007ffd61b76008 EFLAGS: 00000246\n[  117.155419]")
    assert other != USER_MODE_DF
    assert analyze_log_text(other).double_faults[0].regs.cr2 is None
