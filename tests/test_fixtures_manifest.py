"""The guest crash fixtures in fixtures/ agree with fixtures/MANIFEST*.json.

fixtures/MANIFEST.json is written by fixtures/build/builder.py, fixtures/MANIFEST-kdump.json by
fixtures/build/kdump.py; together they list every artifact and scenario.  A manifest never
describes another manifest.  No drgn needed: checks hashes, sizes and the fields of every
expected.json."""
import glob
import hashlib
import json
import os
import re

import pytest

FIX = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures")
MANIFEST = os.path.join(FIX, "MANIFEST.json")
MANIFESTS = sorted(glob.glob(os.path.join(FIX, "MANIFEST*.json")))
HEX = re.compile(r"^0x[0-9a-f]+$")
VERDICTS = {"match", "possible", "no-match", "no-double-fault"}
FORMATS = {"elf", "kdump-compressed", "flattened"}
REQUIRED = {"scenario", "format", "kernel_release", "verdict", "df_class", "cpu", "pid", "tid",
            "comm", "regs", "frames", "vmlinux", "module_debuginfo", "qemu", "notes"}
FRAME_KEYS = {"address", "rip", "cs", "rflags", "rsp", "ss", "orig_ax", "stack"}
REG_KEYS = {"rip", "cs", "rflags", "rsp", "ss", "cr2"}
SWEEP_VERDICTS = {"cpl0-frames-found", "clean", "incomplete"}
# Dumps of a running guest (no crash): no crashing CPU, task or registers (null), but the
# sweep ground truth: each frame's task and the tasks of the workload.
SWEEP_FRAME_KEYS = FRAME_KEYS | {"pid", "tid", "comm"}
TASK_KEYS = {"pid", "tid", "comm"}

pytestmark = pytest.mark.skipif(not os.path.exists(MANIFEST), reason="no fixtures/MANIFEST.json")


def is_manifest(rel):
    return re.fullmatch(r"MANIFEST[^/]*\.json", rel) is not None


def manifests():
    res = []
    for p in MANIFESTS:
        with open(p) as f:
            res.append(json.load(f))
    return res


def manifest():
    """All manifests merged: artifacts (other manifests left out) and scenarios."""
    arts, scen = {}, set()
    for m in manifests():
        arts.update({k: v for k, v in m["artifacts"].items() if not is_manifest(k)})
        scen.update(m["scenarios"])
    return {"artifacts": arts, "scenarios": sorted(scen)}


def scenario_dirs():
    if not os.path.isdir(FIX):
        return []
    return sorted(d for d in os.listdir(FIX)
                  if os.path.isfile(os.path.join(FIX, d, "expected.json")))


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


@pytest.mark.parametrize("path", MANIFESTS, ids=os.path.basename)
def test_manifest_top_level(path):
    with open(path) as f:
        m = json.load(f)
    for key in ("qemu", "gcc", "kernels", "scenarios", "artifacts"):
        assert key in m
    for name, k in m["kernels"].items():
        cfg = os.path.join(FIX, k["config"])
        assert os.path.isfile(cfg), name
        assert sha256(cfg) == k["config_sha256"], name
        assert k["kernel_release"], name


def artifact_entries():
    """(manifest file name, artifact) for every artifact of every manifest: each must be right."""
    res = []
    for path, m in zip(MANIFESTS, manifests()):
        res += [(os.path.basename(path), rel) for rel in sorted(m["artifacts"]) if not is_manifest(rel)]
    return res


@pytest.mark.parametrize("mname,rel", artifact_entries() if os.path.exists(MANIFEST) else [])
def test_artifact_hash(mname, rel):
    with open(os.path.join(FIX, mname)) as f:
        a = json.load(f)["artifacts"][rel]
    p = os.path.join(FIX, rel)
    assert os.path.isfile(p), rel
    assert os.path.getsize(p) == a["size"], rel
    assert sha256(p) == a["sha256"], rel


def test_every_artifact_listed():
    listed = set(manifest()["artifacts"])
    for dp, dns, fns in os.walk(FIX):
        rel = os.path.relpath(dp, FIX)
        if rel.split(os.sep)[0] == "build":
            dns[:] = []
            continue
        for fn in fns:
            r = os.path.relpath(os.path.join(dp, fn), FIX)
            if r == "README.md" or is_manifest(r):
                continue
            assert r in listed, f"{r} is in no MANIFEST*.json"


def test_scenarios_listed():
    assert manifest()["scenarios"] == scenario_dirs()


@pytest.mark.parametrize("name", scenario_dirs())
def test_scenario_dir(name):
    d = os.path.join(FIX, name)
    with open(os.path.join(d, "expected.json")) as f:
        e = json.load(f)
    assert REQUIRED <= set(e), REQUIRED - set(e)
    assert e["scenario"] == name
    assert e["format"] in FORMATS
    assert any(fn.startswith("vmcore") for fn in os.listdir(d))
    assert os.path.isfile(os.path.join(d, "console.log"))
    assert e["verdict"] in VERDICTS
    if e["verdict"] in ("match", "possible"):
        assert e["df_class"] == "cpl-corruption"
    elif e["verdict"] == "no-match":
        assert e["df_class"] and e["df_class"] != "cpl-corruption"
    else:
        assert e["df_class"] is None
    assert isinstance(e["frames"], list)
    if "sweep_verdict" in e and e["truth"].get("final_event") is None:
        check_running_guest(e)
    else:
        if "sweep_verdict" in e:
            # A crash dump whose user stacks hold the CPU's frames (cpl0-trail-oops-*): the
            # sweep's answer is the builder's too.
            assert e["sweep_verdict"] in SWEEP_VERDICTS
            assert (e["sweep_verdict"] == "clean") == (not e["frames"])
        for k in ("cpu", "pid", "tid"):
            assert isinstance(e[k], int) and not isinstance(e[k], bool), k
        assert isinstance(e["comm"], str) and e["comm"]
        assert set(e["regs"]) == REG_KEYS
        for k, v in e["regs"].items():
            assert v is None or HEX.match(v), (k, v)
        for fr in e["frames"]:
            assert set(fr) == FRAME_KEYS, fr
    for fr in e["frames"]:
        assert fr["stack"] in ("user", "kernel")
        for k in FRAME_KEYS - {"stack"}:
            assert HEX.match(fr[k]), (k, fr[k])
    for p in [e["vmlinux"]] + list(e["module_debuginfo"]):
        assert os.path.isfile(os.path.normpath(os.path.join(d, p))), p
    assert isinstance(e["kernel_release"], str) and e["kernel_release"]
    assert isinstance(e["notes"], str) and e["notes"]


def check_running_guest(e):
    """A dump of a guest that did not crash, for the sweep: verdict no-double-fault, no
    crash fields, every frame attributed to one of the listed tasks."""
    assert e["sweep_verdict"] in SWEEP_VERDICTS
    assert e["verdict"] == "no-double-fault" and e["df_class"] is None
    for k in ("cpu", "pid", "tid", "comm", "regs"):
        assert e[k] is None, k
    assert (e["sweep_verdict"] == "clean") == (not e["frames"])
    assert isinstance(e["tasks"], list) and e["tasks"]
    for t in e["tasks"]:
        assert set(t) == TASK_KEYS, t
        assert isinstance(t["pid"], int) and isinstance(t["tid"], int), t
        assert isinstance(t["comm"], str) and t["comm"], t
    tasks = {(t["pid"], t["tid"], t["comm"]) for t in e["tasks"]}
    for fr in e["frames"]:
        assert set(fr) == SWEEP_FRAME_KEYS, fr
        assert (fr["pid"], fr["tid"], fr["comm"]) in tasks, fr
    assert len({fr["address"] for fr in e["frames"]}) == len(e["frames"])
