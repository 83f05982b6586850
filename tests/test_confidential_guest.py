"""Confidential guests (SEV-ES/SNP, TDX): the hypervisor cannot write their CPL, so a
CPL-corruption verdict's explanation says the classic cause is unlikely and what remains."""

from pathlib import Path

import pytest

from dfforensics.core.verdict import DfClass, explain

FIXTURES = Path(__file__).parents[1] / "fixtures"


def test_a_confidential_guest_s_explanation_rules_out_the_classic_hypervisor_cause():
    lines = explain(DfClass.CPL_CORRUPTION, "6.12.117", (6, 12, 117), "AuthenticAMD",
                    confidential_guest="AMD SEV-SNP (sev_status 0x7)")
    text = " ".join(lines)
    assert "AMD SEV-SNP (sev_status 0x7)" in text and "unlikely" in text and "What remains" in text
    assert "Known cause (KVM on AMD/SVM)" not in text


def test_an_ordinary_guest_keeps_the_known_cause():
    lines = explain(DfClass.CPL_CORRUPTION, "6.12.117", (6, 12, 117), "AuthenticAMD")
    assert any("Known cause (KVM on AMD/SVM)" in line for line in lines)
    assert explain(DfClass.KERNEL_STACK_OVERFLOW, None, None, None, "Intel TDX") == []


def test_the_fixture_guests_are_not_confidential():
    drgn = pytest.importorskip("drgn")  # noqa: F841
    from dfforensics.dump.context import confidential_guest
    from dfforensics.dump.opendump import open_dump
    opened = open_dump(str(FIXTURES / "cpl0-irq-df" / "vmcore.xz"),
                       str(FIXTURES / "kernels" / "linux-6.1" / "vmlinux.xz"))
    assert confidential_guest(opened.prog) is None
