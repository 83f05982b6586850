"""Triage's typed jobs and rows, and their JSON at the process boundary."""

import dataclasses
import json

from dfforensics.batch.jobs import (ROW_FIELDS, Job, Row, job_from_wire, job_to_wire, row_from_wire,
                                    row_to_wire)
from dfforensics.core.errors import DumpError, ErrorKind


def test_row_fields_are_the_readme_fields_in_order():
    assert tuple(f.name for f in dataclasses.fields(Row)) == ROW_FIELDS
    assert ROW_FIELDS == ("path", "size", "mtime", "kind", "status", "mode", "verdict", "df_class",
                          "kernel_release", "cpu", "pid", "comm", "frames", "error_kind", "error",
                          "summary", "note", "log", "vmlinux", "seconds", "title", "dedup_key")


def test_a_row_crosses_the_boundary_unchanged():
    row = Row(path="/a/vmcore", size=3, mtime=1.5, kind="elf-core", status="error",
              error_kind=ErrorKind.MISMATCH, error="does not belong", seconds=0.25)
    wire = json.loads(json.dumps(row_to_wire(row)))
    assert list(wire) == list(ROW_FIELDS)
    assert wire["error_kind"] == "vmlinux-mismatch"
    assert row_from_wire(wire) == row


def test_a_job_crosses_the_boundary_unchanged():
    job = Job("/a/vmcore", 3, 1.5, "kdump-compressed", log="/a/vmcore-dmesg.txt", release="6.1.192",
              plan_error="cut", plan_error_kind=ErrorKind.CORRUPT_DUMP)
    assert job_from_wire(json.loads(json.dumps(job_to_wire(job)))) == job


def test_an_error_says_its_kind():
    assert DumpError("x", ErrorKind.NO_VMCOREINFO).kind is ErrorKind.NO_VMCOREINFO
    assert DumpError("x").kind is ErrorKind.INPUT
