"""The README's libvirt domain XML (a second QMP socket and vmcoreinfo for the live sweep)
is valid libvirt domain XML: the README's own block, with the parts every domain needs
where it writes "...", checked by libvirt's virt-xml-validate against its schema."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

README = Path(__file__).parents[1] / "README.md"
NEEDED = {"<features>": "  <name>guest</name>\n  <memory unit='MiB'>512</memory>\n"
                        "  <os><type arch='x86_64' machine='pc'>hvm</type></os>\n  <features>",
          "<qemu:commandline>": "  <devices><emulator>/usr/bin/qemu-system-x86_64</emulator></devices>\n"
                                "  <qemu:commandline>"}


def readme_domain() -> str:
    section = README.read_text().split("**On a libvirt host.**", 1)[1]
    block = re.search(r"```xml\n(.*?)```", section, re.S).group(1)
    block = "\n".join(line for line in block.splitlines() if line.strip() != "...")
    for tag, with_what in NEEDED.items():
        block = block.replace(f"  {tag}", with_what, 1)
    return block


@pytest.mark.skipif(not (shutil.which("virt-xml-validate") and shutil.which("xmllint")),
                    reason="needs virt-xml-validate and xmllint (libvirt-clients, libxml2-utils: .ci/system-packages)")
def test_the_readme_domain_xml_is_valid_libvirt_xml(tmp_path):
    domain = readme_domain()
    assert "<vmcoreinfo state='on'/>" in domain and "<qemu:arg value='-qmp'/>" in domain
    path = tmp_path / "domain.xml"
    path.write_text(domain)
    result = subprocess.run(["virt-xml-validate", str(path), "domain"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    # The check can fail: a misspelt feature does not validate.
    path.write_text(domain.replace("<vmcoreinfo state=", "<vmcoreinf state="))
    assert subprocess.run(["virt-xml-validate", str(path), "domain"], capture_output=True).returncode != 0
