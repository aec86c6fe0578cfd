"""The run store, the experiment cache and the workspace: atomic, locked, honest about damage."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import tools.atomic
from agents.cli import main as sleuth
from memory.records import Claim
from memory.runstore import RunStore
from memory.workspace import Workspace, resolve_workspace
from tests._experiment_models import tiny_loaded, word_pairs
from tools.atomic import atomic_write_text
from tools.errors import StorageError, UserInputError
from tools.experiments import LogitLensSpec
from tools.experiments.registry import run_experiment

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def store(tmp_path):
    workspace = Workspace.open(tmp_path / "ws", writer=True)
    yield RunStore(workspace)
    workspace.close()


@pytest.fixture(scope="module")
def model():
    return tiny_loaded("gpt2")


def _claim(run, i, verdict="supported"):
    return Claim(id=f"c{i}", run_id=run.id, statement=f"claim {i}", components=[f"head.0.{i % 4}"],
                 verdict=verdict, model_id="tiny-gpt2")


def _disk_full(monkeypatch):
    def fsync(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(tools.atomic.os, "fsync", fsync)


def test_a_failing_write_raises_a_clear_error_and_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "f.json"
    atomic_write_text(path, "old")
    _disk_full(monkeypatch)
    with pytest.raises(StorageError, match=r"could not write .*f\.json: No space left on device"):
        atomic_write_text(path, "new")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.json"]  # no temporary file left


def test_a_full_disk_mid_run_loses_nothing_already_stored(store, monkeypatch, capsys):
    run = store.create("why?", "tiny-gpt2")
    for i in range(3):
        run.add_claim(_claim(run, i))
    run.update(status="running")
    before = {p.name: p.read_bytes() for p in run.folder.iterdir() if p.is_file()}
    _disk_full(monkeypatch)
    with pytest.raises(StorageError, match="No space left"):
        run.add_claim(_claim(run, 3))
    with pytest.raises(StorageError, match="No space left"):
        run.update(status="answered")
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in run.folder.iterdir() if p.is_file()} == before
    again = store.open(run.id)
    assert [c.id for c in again.claims()] == ["c0", "c1", "c2"] and again.record.status == "running"
    _disk_full(monkeypatch)
    store.workspace.close()
    assert sleuth(["runs", "--workspace", str(store.workspace.path)]) == 0  # reading needs no write


def test_workspace_location_flag_then_environment_then_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SLEUTH_WORKSPACE", raising=False)
    assert resolve_workspace() == tmp_path / "sleuth-workspace"
    monkeypatch.setenv("SLEUTH_WORKSPACE", str(tmp_path / "env-ws"))
    assert resolve_workspace() == tmp_path / "env-ws"
    assert resolve_workspace(tmp_path / "flag-ws") == tmp_path / "flag-ws"
    with Workspace.open(writer=True) as ws:
        assert ws.path == tmp_path / "env-ws"
        assert json.loads((ws.path / "workspace.json").read_text()) == {"format": 1}


def test_missing_or_invalid_workspaces_are_clear_errors(tmp_path, capsys):
    with pytest.raises(StorageError, match="no workspace at .*nothing has run there"):
        Workspace.open(tmp_path / "absent")
    with pytest.raises(StorageError, match="does not exist"):
        Workspace.open(tmp_path / "no" / "parent", writer=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(StorageError, match="is a file"):
        Workspace.open(tmp_path / "file", writer=True)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "thesis.tex").write_text("mine")
    for writer in (False, True):
        with pytest.raises(StorageError, match="not a circuitsleuth workspace"):
            Workspace.open(tmp_path / "other", writer=writer)
    assert sorted(p.name for p in (tmp_path / "other").iterdir()) == ["thesis.tex"]
    assert sleuth(["runs", "--workspace", str(tmp_path / "absent")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sleuth: error: no workspace at") and err.count("\n") == 1
    assert not (tmp_path / "absent").exists()


NON_WRITER = """
import os, sys
from memory.workspace import Workspace
from tools.errors import StorageError
if os.geteuid() == 0:
    os.setgid(65534); os.setuid(65534)   # root writes anywhere: drop to nobody (after imports)
try:
    Workspace.open(sys.argv[1], writer=True, timeout=0)
except StorageError as e:
    print("ERROR", e)
"""


@pytest.fixture
def traversable_dir():
    """A folder every user can enter (pytest's tmp_path sits under a root-only folder)."""
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="sleuth-ro-"))
    os.chmod(folder, 0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_a_non_writable_workspace_is_a_clear_error_and_keeps_its_runs(traversable_dir):
    parent = traversable_dir
    with Workspace.open(parent / "ws", writer=True) as ws:
        run = RunStore(ws).create("kept?", "tiny-gpt2")
        run.add_claim(_claim(run, 0))
    before = sorted((p.relative_to(parent), p.read_bytes()) for p in parent.rglob("*") if p.is_file())
    os.chmod(parent / "ws", 0o555)
    try:
        out = subprocess.run([sys.executable, "-c", NON_WRITER, str(parent / "ws")], cwd=ROOT,
                             capture_output=True, text=True, timeout=120,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
    finally:
        os.chmod(parent / "ws", 0o755)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ERROR workspace") and "not writable" in out.stdout, out.stdout
    after = sorted((p.relative_to(parent), p.read_bytes()) for p in parent.rglob("*") if p.is_file())
    assert after == before
    assert [r.question for r in RunStore(Workspace.open(parent / "ws")).list()] == ["kept?"]


def test_an_unreadable_workspace_is_a_clear_error(tmp_path):
    os.chmod(tmp_path, 0o700)  # nobody cannot enter pytest's root-only tmp folders
    out = subprocess.run([sys.executable, "-c", NON_WRITER, str(tmp_path / "ws")], cwd=ROOT,
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    if os.geteuid() != 0:
        pytest.skip("only root can demonstrate an unreadable folder here")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ERROR cannot open workspace") and "Permission denied" in out.stdout


HOLDER = """
import sys, time
from memory.workspace import Workspace
ws = Workspace.open(sys.argv[1], writer=True)
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
ws.close()
"""


def _hold(path, seconds):
    child = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), str(seconds)], cwd=ROOT,
                             stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert child.stdout.readline().strip() == "locked"
    return child


def test_a_second_writer_waits_a_bounded_time_then_says_who_holds_the_lock(tmp_path):
    holder = _hold(tmp_path / "ws", 60)
    try:
        start = time.monotonic()
        with pytest.raises(StorageError, match=rf"in use by another writer \(pid {holder.pid} on .*waited 0.5 s"):
            Workspace.open(tmp_path / "ws", writer=True, timeout=0.5)
        assert 0.5 <= time.monotonic() - start < 5
        reader = Workspace.open(tmp_path / "ws")  # readers take no lock
        assert RunStore(reader).list() == []
    finally:
        holder.kill()
        holder.wait()
    # the kernel drops a killed holder's lock: no stale lock after a crash
    with Workspace.open(tmp_path / "ws", writer=True, timeout=2) as ws:
        assert ws.writer


def test_a_writer_gets_the_lock_when_the_holder_finishes_within_the_wait(tmp_path):
    holder = _hold(tmp_path / "ws", 1.0)
    try:
        with Workspace.open(tmp_path / "ws", writer=True, timeout=30) as ws:
            assert ws.writer
    finally:
        holder.wait()


def test_a_bad_lock_timeout_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("SLEUTH_LOCK_TIMEOUT", "nope")
    with pytest.raises(StorageError, match="SLEUTH_LOCK_TIMEOUT must be a number"):
        Workspace.open(tmp_path / "ws", writer=True)


def test_identical_experiments_run_once_per_workspace_and_hits_are_counted(store, model):
    calls = []

    def runner(m, spec):
        calls.append(spec)
        return run_experiment(m, spec)

    spec = LogitLensSpec(prompts=word_pairs(n=2))
    first = store.create("first", model.model_id)
    a = first.experiment(model, spec, runner)
    assert first.experiment(model, spec, runner) == a
    second = store.create("second", model.model_id)
    b = second.experiment(model, spec, runner)
    other = second.experiment(model, LogitLensSpec(prompts=word_pairs(n=2, seed=5)), runner)
    assert len(calls) == 2 and b == a and other != a
    assert first.record.cost.model_dump(include={"experiments", "cache_hits", "cache_misses"}) == \
        {"experiments": 2, "cache_hits": 1, "cache_misses": 1}
    assert second.record.cost.cache_hits == 1 and second.record.cost.cache_misses == 1
    # counts survive on disk, each run folder holds the results it used, the cache holds each once
    reopened = RunStore(store.workspace).open(second.id)
    assert reopened.record.cost.cache_hits == 1
    assert reopened.experiment_keys() == sorted([a.key, other.key])
    assert reopened.load_experiment(a.key) == a
    assert store.cache.keys() == sorted([a.key, other.key])


def test_the_same_spec_on_other_weights_is_a_different_experiment(store, model):
    other_model = tiny_loaded("gpt2", seed=1)
    spec = LogitLensSpec(prompts=word_pairs(n=2))
    run = store.create("weights", model.model_id)
    a, b = run.experiment(model, spec), run.experiment(other_model, spec)
    assert a.key != b.key and run.record.cost.cache_misses == 2


def test_a_damaged_cache_entry_is_recomputed_not_trusted(store, model):
    spec = LogitLensSpec(prompts=word_pairs(n=2))
    run = store.create("damage", model.model_id)
    good = run.experiment(model, spec)
    tensor_file = store.cache.folder / f"{good.key}.safetensors"
    tensor_file.write_bytes(tensor_file.read_bytes()[:40])
    assert store.cache.get(good.key) is None  # moved aside
    assert (store.cache.folder / f"{good.key}.safetensors.corrupt").exists()
    again = store.create("again", model.model_id).experiment(model, spec)
    assert again == good


def test_damaged_runs_are_listed_with_the_reason_and_the_others_load(store, model, capsys):
    runs = [store.create(f"question {i}", model.model_id) for i in range(5)]
    for run in runs:
        run.experiment(model, LogitLensSpec(prompts=word_pairs(n=2, seed=len(run.id))))
        run.add_claim(_claim(run, 0))
    truncated, garbled, bad_claims, missing = runs[0], runs[1], runs[2], runs[3]
    # a run's experiment file is a hard link to the cache: replace it, don't write through it
    (key,) = truncated.experiment_keys()
    target = truncated.folder / "experiments" / f"{key}.safetensors"
    data = target.read_bytes()
    target.unlink()
    target.write_bytes(data[:-7])
    (garbled.folder / "run.json").write_text('{"id": "' + garbled.id + '", "question": ')
    with open(bad_claims.folder / "claims.jsonl", "a") as f:
        f.write('{"id": "c9", "statement": 3}\n')
    (key,) = missing.experiment_keys()
    (missing.folder / "experiments" / f"{key}.safetensors").unlink()
    listed = {r.id: r for r in store.list()}
    assert listed[truncated.id].damaged.startswith(f"experiments/{truncated.experiment_keys()[0]}.json: ")
    assert "is truncated" in listed[truncated.id].damaged
    assert listed[garbled.id].damaged.startswith("run.json:")
    assert listed[bad_claims.id].damaged.startswith("claims.jsonl: line 2")
    assert "is missing" in listed[missing.id].damaged
    assert listed[runs[4].id].damaged is None and listed[runs[4].id].supported == 1
    with pytest.raises(StorageError, match=f"run {truncated.id} is damaged"):
        store.open(truncated.id)
    store.workspace.close()
    assert sleuth(["runs", "--workspace", str(store.workspace.path)]) == 0
    out = capsys.readouterr().out
    assert out.count("DAMAGED") == 4 and "question 4" in out
    assert sleuth(["runs", "--workspace", str(store.workspace.path), "--json"]) == 0
    rows = {r["id"]: r for r in json.loads(capsys.readouterr().out)["runs"]}
    assert {i for i, r in rows.items() if r["damaged"] is None} == {runs[4].id}
    assert rows[runs[4].id]["question"] == "question 4" and rows[runs[4].id]["cost"]["experiments"] == 1


def test_claims_are_replaced_by_id_and_survive_reopening(store):
    run = store.create("claims", "tiny-gpt2")
    run.add_claim(_claim(run, 0, "untested"))
    run.add_claim(_claim(run, 1, "refuted"))
    run.add_claim(_claim(run, 0, "supported"))
    reopened = store.open(run.id)
    assert [(c.id, c.verdict) for c in reopened.claims()] == [("c0", "supported"), ("c1", "refuted")]
    s = reopened.summary()
    assert (s.supported, s.refuted) == (1, 1)
    with pytest.raises(UserInputError, match="belongs to run"):
        run.add_claim(_claim(run, 2).model_copy(update={"run_id": "elsewhere"}))


def test_run_ids_and_report_names_cannot_escape_the_workspace(store):
    for bad in ("../x", "a/b", "", ".hidden"):
        with pytest.raises(UserInputError):
            store.create("q", "m", run_id=bad)
        with pytest.raises(UserInputError):
            store.open(bad)
    run = store.create("q", "m")
    with pytest.raises(UserInputError, match="plain file name"):
        run.write_report("../../evil.html", "x")
    assert run.write_report("report.md", "# hi").read_text() == "# hi"


def test_a_read_only_workspace_refuses_writes(store):
    run = store.create("q", "m")
    store.workspace.close()
    reader = RunStore(Workspace.open(store.workspace.path))
    with pytest.raises(StorageError, match="opened read-only"):
        reader.open(run.id).add_claim(_claim(run, 0))
    with pytest.raises(StorageError, match="opened read-only"):
        reader.create("q", "m")


def test_a_killed_holder_leaves_partial_files_that_the_next_writer_removes(tmp_path):
    with Workspace.open(tmp_path / "ws", writer=True) as ws:
        run = RunStore(ws).create("q", "m")
    stale = run.folder / ".claims.jsonl.123.partial"
    stale.write_text("half")
    assert RunStore(Workspace.open(tmp_path / "ws")).list()[0].damaged is None  # readers ignore it
    assert stale.exists()
    with Workspace.open(tmp_path / "ws", writer=True) as ws:
        RunStore(ws)
    assert not stale.exists()


def test_sigkill_of_a_lock_holder_is_survived(tmp_path):
    holder = _hold(tmp_path / "ws", 60)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    with Workspace.open(tmp_path / "ws", writer=True, timeout=1) as ws:
        assert RunStore(ws).list() == []
