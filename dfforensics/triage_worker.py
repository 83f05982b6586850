"""
One triage job, in its own process
----------------------------------

``python -m dfforensics.triage_worker JOB_JSON`` analyses one dump (or log)
and prints one JSON object. The parent runs it with a timeout and a memory
cap, so a dump that crashes, hangs or exhausts its worker costs only its own
row.
"""

import json
import sys
import time
from typing import Any, Optional

from dfforensics.entrypoint import exit_without_teardown, skip_drgn_plugins
from dfforensics.errors import InputError

__all__ = ("run_job", "row_from_report")


def row_from_report(report: Any, mode: str) -> dict[str, Any]:
    """The triage row of one analysed report."""
    deciding = [df for df in report.double_faults if df.verdict == report.verdict]
    df = deciding[0] if deciding else None
    return {
        "status": "ok",
        "mode": mode,
        "verdict": report.verdict.value,
        "df_class": report.df_class.value if report.df_class else None,
        "kernel_release": report.kernel.release,
        "cpu": df.cpu if df else None,
        "pid": df.pid if df else None,
        "comm": df.comm if df else None,
        "frames": len(report.frames),
        "summary": report.summary,
    }


def _error_kind(message: str) -> str:
    lowered = message.lower()
    for words, kind in (
        (("does not belong",), "vmlinux-mismatch"),
        (("no vmcoreinfo",), "no-vmcoreinfo"),
        (("truncated", "corrupt", "could not read memory", "fault"), "corrupt-dump"),
        (("not an elf", "not a linux kernel", "not a kernel"), "not-a-dump"),
        (("debug info", "vmlinux"), "debuginfo"),
    ):
        if any(word in lowered for word in words):
            return kind
    return "input"


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Analyse one item; never raises for bad input (it becomes an error row)."""
    start = time.monotonic()
    row: dict[str, Any] = {}
    try:
        if job["kind"] == "log" or (job.get("vmlinux") is None and job.get("log")):
            from dfforensics.log_analysis import analyze_log_text
            path = job["path"] if job["kind"] == "log" else job["log"]
            with open(path, "rb") as file:
                text = file.read().decode("utf-8", errors="replace")
            mode = "log-only" if job["kind"] == "log" else "log-fallback"
            row = row_from_report(analyze_log_text(text, path), mode)
            if mode == "log-fallback":
                row["note"] = f"no debug vmlinux for {job.get('release') or 'this kernel'}: " \
                              f"analysed its console log {path} instead"
        elif job.get("vmlinux") is None:
            row = {"status": "error", "error_kind": "no-debuginfo",
                   "error": f"no debug vmlinux found for kernel {job.get('release') or 'unknown'} "
                            "and no console log beside the dump"}
        else:
            from dfforensics.vmcore import analyze_vmcore_files
            row = row_from_report(analyze_vmcore_files(job["path"], job["vmlinux"]), "vmcore")
            row["vmlinux"] = job["vmlinux"]
    except InputError as error:
        row = {"status": "error", "error_kind": _error_kind(str(error)), "error": str(error)}
    except MemoryError:
        row = {"status": "error", "error_kind": "memory", "error": "out of memory (memory cap)"}
    row["seconds"] = round(time.monotonic() - start, 3)
    return row


def main(argv: Optional[list[str]] = None) -> int:
    skip_drgn_plugins()
    job = json.loads((argv or sys.argv[1:])[0])
    sys.stdout.write(json.dumps(run_job(job)) + "\n")
    return 0


if __name__ == "__main__":
    exit_without_teardown(main())
