"""The live sweep on real running guests (issue 21): two QEMU guests of the committed 6.1
kernel booted here, one with the emulated hypervisor bug (fixtures/build/gdb/dfdrive.py at
the victim's stations: three CPL-0 deliveries onto a coroutine stack that the victim then
leaves for its main [stack]), one without. Swept over QMP while they run: exactly gdb's
frames on the first, clean on the second, both still running afterwards; a socket another
client holds is one error line; the dump of the first, whose frames sit on a stack the
thread has left, gives cpl0-frames-found."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import liveguest
from btffixtures import detached_btf  # noqa: F401 (a fixture)

pytestmark = pytest.mark.skipif(bool(liveguest.missing_tools()),
                                reason=f"needs {', '.join(liveguest.missing_tools())} (.ci/system-packages)")
CLI = [sys.executable, "-m", "dfforensics.cli"]


@pytest.fixture(scope="module")
def guests(tmp_path_factory):
    directory = tmp_path_factory.mktemp("live")
    started = []
    try:
        # The clean guest boots while gdb drives the other one.
        bug = liveguest.Guest(directory, "bug", bug=True)
        started.append(bug)
        clean = liveguest.Guest(directory, "clean")
        started.append(clean)
        truth = bug.drive_result()
        for guest in started:
            guest.wait_console(r"lvinit: lv-threads pid \d+ started")
        left = bug.wait_console(r"lv-left pid (\d+) stations done on coroutine stack ([0-9a-f]+)-([0-9a-f]+), "
                                r"spinning on main stack")
        yield {"bug": bug, "clean": clean, "truth": truth, "directory": directory,
               "coroutine": (int(left.group(2), 16), int(left.group(3), 16))}
    finally:
        for guest in started:
            guest.close()


def sweep(*args, timeout=300):
    return subprocess.run(CLI + ["sweep", *args], capture_output=True, text=True, timeout=timeout)


def frames_of(truth):
    return sorted((int(f["address"], 16), f["pid"], f["tid"]) for f in truth["frames"])


def test_live_sweep_finds_exactly_the_frames_gdb_saw_and_clean_elsewhere(guests):
    bug, clean, truth = guests["bug"], guests["clean"], guests["truth"]
    assert len(truth["frames"]) == 3 and all(f["cs"] == "0x33" and f["ss"] == "0x2b" for f in truth["frames"])
    result = sweep("--qemu", str(bug.qmp), "--qemu", str(clean.qmp), str(bug.vmlinux), "--format", "json")
    assert result.returncode == 0, result.stderr
    first, second = json.loads(result.stdout)
    assert first["source"]["path"] == str(bug.qmp) and second["source"]["path"] == str(clean.qmp)
    assert first["sweep"]["verdict"] == "cpl0-frames-found"
    assert sorted((f["address"], f["pid"], f["tid"]) for f in first["frames"]) == frames_of(truth)
    assert first["verdict"] == "match"
    # The coroutine stack the victim left, read as an anonymous mapping, and read twice.
    low, high = guests["coroutine"]
    holding = [s for s in first["sweep"]["stacks"] if s["frame_addresses"]]
    assert [(s["reason"], s["start"], s["end"]) for s in holding] == [("anonymous mapping", low, high)]
    assert first["sweep"]["coverage"]["live"] and first["sweep"]["coverage"]["frames_unconfirmed"] == 0
    assert second["sweep"]["verdict"] == "clean" and second["frames"] == []
    assert bug.status() == "running" and clean.status() == "running"


def test_a_busy_socket_is_one_error_line_and_is_let_go_after(guests):
    clean = guests["clean"]
    holder = liveguest.Qmp(clean.qmp)  # another client, as libvirt would be
    try:
        result = sweep("--qemu", str(clean.qmp), str(clean.vmlinux), "--greeting-timeout", "1")
    finally:
        holder.close()
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("dfforensics: error: QMP socket ")
    assert "busy" in result.stderr
    # Once the other client is gone the sweep runs, and lets go: a client right after it connects.
    result = sweep("--qemu", str(clean.qmp), str(clean.vmlinux), "-q")
    assert result.returncode == 0 and "sweep clean" in result.stdout, result.stderr
    liveguest.Qmp(clean.qmp, timeout=5).close()
    assert clean.status() == "running"


def test_bad_sockets_are_one_error_line(guests, tmp_path):
    not_socket = tmp_path / "plain"
    not_socket.write_text("x")
    for path, words in ((tmp_path / "absent.sock", "no such file"), (not_socket, "not a socket")):
        result = sweep("--qemu", str(path))
        assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
        assert result.stderr.startswith("dfforensics: error: QMP socket") and words in result.stderr
    other = Path(__file__).parents[1] / "fixtures" / "kernels" / "linux-6.12" / "vmlinux.xz"
    result = sweep("--qemu", str(guests["clean"].qmp), str(other))
    assert result.returncode == 2 and "does not belong to the QMP guest" in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1
    liveguest.Qmp(guests["clean"].qmp, timeout=5).close()  # let go after an error too


def watch(output, arguments, rounds_after, env=None):
    """Run ``sweep ... --every`` until its first sweep event, ``rounds_after`` seconds more,
    then Ctrl-C: its exit status and stderr."""
    process = subprocess.Popen(CLI + ["sweep", *arguments, "-o", str(output)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (output.exists() and '"sweep"' in output.read_text()):
            time.sleep(0.2)
        time.sleep(rounds_after)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return process.returncode, err


def test_every_writes_one_event_per_new_finding_and_stops_cleanly(guests, tmp_path):
    bug = guests["bug"]
    events = tmp_path / "events.jsonl"
    # A few more rounds after the first: nothing new, so no new events.
    status, err = watch(events, ["--qemu", str(bug.qmp), str(bug.vmlinux), "--every", "0.5"], rounds_after=2)
    assert status == 0 and err == "", err
    records = [json.loads(line) for line in events.read_text().splitlines()]
    frames = [r for r in records if r["event"] == "cpl0-frame"]
    assert sorted((r["frame"]["address"], r["frame"]["pid"], r["frame"]["tid"]) for r in frames) \
        == frames_of(guests["truth"]), records
    assert [r["verdict"] for r in records if r["event"] == "sweep"] == ["cpl0-frames-found"], records
    assert all(r["comm"] == "lv-left" for r in frames)
    liveguest.Qmp(bug.qmp, timeout=5).close()
    assert bug.status() == "running"


class Events:
    """The QMP events QEMU broadcasts while the test holds the guest's second socket."""

    def __init__(self, path):
        self.monitor = liveguest.Qmp(path)
        self.seen = []
        self.thread = threading.Thread(target=self._listen, daemon=True)
        self.thread.start()

    def _listen(self):
        try:
            for line in self.monitor.file:
                self.seen.append(json.loads(line).get("event"))
        except (OSError, ValueError):
            pass

    def close(self):
        time.sleep(0.5)  # events QEMU sent just before are read
        self.monitor.sock.shutdown(socket.SHUT_RDWR)
        self.thread.join(timeout=10)
        self.monitor.close()


def test_with_vmlinux_the_sweep_never_pauses_the_guest(guests):
    clean = guests["clean"]
    events = Events(clean.qmp2)
    try:
        result = sweep("--qemu", str(clean.qmp), str(clean.vmlinux), "--format", "json")
    finally:
        events.close()
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["source"]["vmcoreinfo"].startswith("read from guest memory without pausing")
    assert "STOP" not in events.seen and "DUMP_COMPLETED" not in events.seen, events.seen
    # drgn's own way, for contrast: its one-byte dump-guest-memory stops the guest.
    events = Events(clean.qmp2)
    try:
        drgn_only = subprocess.run([sys.executable, "-c", "import drgn; drgn.Program().set_qemu_qmp("
                                    f"{str(clean.qmp)!r})"], capture_output=True, text=True, timeout=60)
    finally:
        events.close()
    assert drgn_only.returncode == 0, drgn_only.stderr
    assert "STOP" in events.seen and "RESUME" in events.seen, events.seen
    assert clean.status() == "running"


def test_without_vmlinux_no_sweep_pauses_the_guest(guests, tmp_path, detached_btf):
    clean = guests["clean"]
    _, btf = detached_btf("6.1")
    env = dict(os.environ, DFFORENSICS_CACHE=str(tmp_path / "cache"))  # no build seen yet
    out = tmp_path / "events.jsonl"
    events = Events(clean.qmp2)
    try:
        first = subprocess.run(CLI + ["sweep", "--qemu", str(clean.qmp), "--btf", btf, "--format", "json"],
                               capture_output=True, text=True, timeout=300, env=env)
        # Then, with the build known from that sweep, an --every loop.
        status, err = watch(out, ["--qemu", str(clean.qmp), "--btf", btf, "--every", "0.3"], rounds_after=3, env=env)
    finally:
        events.close()
    assert first.returncode == 0, first.stderr
    # What the first sweep's lookups found is kept for the next sweep of the build.
    kept = {path.name.rsplit("-", 2)[-2] + "-answers" for path in (tmp_path / "cache").rglob("*-answers")}
    assert kept == {"kallsyms-answers", "btf-answers"}, sorted(p.name for p in (tmp_path / "cache").rglob("*"))
    # An unknown build: the note is found through the kernel image's pointer to it.
    assert "holds the only pointer to a note of its own" in json.loads(first.stdout)["source"]["vmcoreinfo"]
    assert status == 0 and err == "", err
    assert [r["verdict"] for r in map(json.loads, out.read_text().splitlines())] == ["clean"]
    assert "STOP" not in events.seen and "DUMP_COMPLETED" not in events.seen, events.seen
    assert clean.status() == "running"


def test_ctrl_c_at_any_moment_of_back_to_back_sweeps_ends_the_watch(guests, tmp_path):
    # A signal that lands inside drgn (one of its Python callbacks) must still end the loop:
    # sweeps back to back, interrupted at several moments of a round.
    clean = guests["clean"]
    for number, delay in enumerate((0.05, 0.2, 0.45, 0.7, 1.0)):
        out = tmp_path / f"events-{number}.jsonl"
        status, err = watch(out, ["--qemu", str(clean.qmp), str(clean.vmlinux), "--every", "0.01"],
                            rounds_after=delay)
        assert status == 0 and "Traceback" not in err, err
    assert clean.status() == "running"


def test_dfsweep_in_drgn_opened_with_qemu(guests):
    bug = guests["bug"]
    drgn = Path(sys.executable).with_name("drgn")
    code = ("from drgn.commands import run_command; r = run_command(prog, 'dfsweep --format json'); "
            "import sys; sys.stderr.write('VERDICT ' + r.sweep.verdict.value + '\\n')")
    # drgn's own plugin loading is what runs the command: no setting another test left.
    env = {k: v for k, v in os.environ.items() if k not in ("DRGN_DISABLE_PLUGINS", "DRGN_PLUGINS")}
    result = subprocess.run([str(drgn), "--qemu", str(bug.qmp), "-s", str(bug.vmlinux), "-e", code],
                            capture_output=True, text=True, timeout=300, env=env)
    assert "VERDICT cpl0-frames-found" in result.stderr, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert sorted((f["address"], f["pid"], f["tid"]) for f in report["frames"]) == frames_of(guests["truth"])


def test_dump_with_frames_on_a_stack_the_thread_has_left(guests):
    """The running guest dumped (QMP dump-guest-memory, the guest goes on): lv-left's saved
    RSP is on its main [stack], its frames on the coroutine stack it left."""
    bug = guests["bug"]
    vmcore = guests["directory"] / "left-stack.vmcore"
    qmp = liveguest.Qmp(bug.qmp2, timeout=120)
    try:
        qmp.cmd("dump-guest-memory", paging=False, protocol=f"file:{vmcore}", format="elf")
    finally:
        qmp.close()
    try:
        result = sweep(str(vmcore), str(bug.vmlinux), "--format", "json")
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        assert report["sweep"]["verdict"] == "cpl0-frames-found"
        assert sorted((f["address"], f["pid"], f["tid"]) for f in report["frames"]) == frames_of(guests["truth"])
        low, high = guests["coroutine"]
        victim = guests["truth"]["frames"][0]["tid"]
        under_rsp = [s for s in report["sweep"]["stacks"] if s["tid"] == victim and s["reason"] == "saved RSP"]
        assert [s["mapping"] for s in under_rsp] == ["[stack]"] and not under_rsp[0]["frame_addresses"]
        assert not any(s["start"] <= low < s["end"] for s in under_rsp)

        # Without the left stacks (a bound of 0 pages) the same dump cannot be clean.
        from dfforensics.core.verdict import judge_sweep
        from dfforensics.dump.opendump import open_dump
        from dfforensics.dump.sweep import sweep_user_stacks
        prog = open_dump(str(vmcore), str(bug.vmlinux)).prog
        narrow = judge_sweep(sweep_user_stacks(prog, bound=0).observation)
        assert narrow.verdict.value == "incomplete" and not narrow.frames
        assert "beyond the bound of 0 pages" in narrow.summary
    finally:
        os.unlink(vmcore)
    assert bug.status() == "running"


def test_tasks_and_page_tables_changing_under_the_sweep_never_make_a_frame(tmp_path):
    """A guest whose lv-churn forks, maps, threads and exits without end: each live sweep
    reads tasks and page tables as they change. Never a frame; clean, or incomplete with
    the reason; tasks that exited mid-sweep counted."""
    guest = liveguest.Guest(tmp_path, "churn", churn=True)
    try:
        guest.wait_console(r"lvinit: lv-churn pid \d+ forking")
        guest.wait_console(r"lvinit: lv-threads pid \d+ started")
        verdicts = []
        for _ in range(6):
            result = sweep("--qemu", str(guest.qmp), str(guest.vmlinux), "--format", "json")
            assert result.returncode == 0, result.stderr
            report = json.loads(result.stdout)
            assert report["frames"] == [] and report["verdict"] == "no-double-fault"
            verdicts.append(report["sweep"]["verdict"])
            if verdicts[-1] == "incomplete":
                assert report["sweep"]["summary"].startswith("no frame found, but ")
            assert report["sweep"]["coverage"]["live"]
        assert set(verdicts) <= {"clean", "incomplete"} and "clean" in verdicts, verdicts
        assert guest.status() == "running"
    finally:
        guest.close()
