"""Runs on disk and the experiment cache they share.

``RunStore(workspace)`` creates, opens and lists runs; a `Run` records its experiments, claims
and reports under ``WORKSPACE/runs/<run_id>/``. Every file is written atomically
(`tools.atomic`): after a crash each file is its old version or its new one. A result's tensor
file is written before its JSON, so a result is present exactly when its JSON is.

The experiment cache (``WORKSPACE/cache/experiments/<key>.*``) is shared by every run of the
workspace. ``key`` is the content hash of the weights hash and the spec, so an identical
experiment on identical weights is run once; `Run.experiment` serves it from the cache
afterwards and counts hits and misses in ``run.json``. A run's ``experiments/`` folder holds
hard links to the cached files it used (copies where links are not possible), so a run folder
is complete on its own.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import struct
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from pydantic import ValidationError

from memory.records import Claim, RunRecord, RunSummary, now
from memory.workspace import Workspace
from tools.atomic import TEMP_SUFFIX, atomic_write_bytes, atomic_write_text
from tools.errors import StorageError, UserInputError

if TYPE_CHECKING:
    from tools.experiments.result import ExperimentResult
    from tools.experiments.spec import ExperimentSpec
    from tools.loading import LoadedModel

log = logging.getLogger(__name__)

_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_KEY = re.compile(r"^[0-9a-f]{64}$")
REPORT_NAMES = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def new_run_id() -> str:
    """Sortable and unique: ``20261125-141230-3fa9c1``."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


class ExperimentCache:
    """Content-addressed results: ``get(key)``, ``put(result)``, ``contains(key)``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def contains(self, key: str) -> bool:
        return _KEY.match(key) is not None and (self.folder / f"{key}.json").is_file()

    def get(self, key: str) -> "ExperimentResult | None":
        """The cached result, or None. A damaged entry is moved aside (``*.corrupt``) and missed."""
        if not self.contains(key):
            return None
        from tools.experiments.registry import load_result

        path = self.folder / f"{key}.json"
        try:
            result = load_result(path)
            if result.key != key:
                raise ValueError(f"holds the result for key {result.key[:12]}")
            return result
        except Exception as e:  # noqa: BLE001 - any unreadable entry is a miss, never a crash
            log.warning("experiment cache entry %s is damaged (%s); moved aside, will recompute", key[:12], e)
            for suffix in (".json", ".safetensors"):
                damaged = self.folder / f"{key}{suffix}"
                if damaged.exists():
                    os.replace(damaged, damaged.with_name(damaged.name + ".corrupt"))
            return None

    def put(self, result: "ExperimentResult") -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        return result.save(self.folder)

    def keys(self) -> list[str]:
        return sorted(p.stem for p in self.folder.glob("*.json") if _KEY.match(p.stem))


class Run:
    """One investigation's folder. Obtain through `RunStore.create` / `RunStore.open`."""

    def __init__(self, store: "RunStore", record: RunRecord) -> None:
        self.store = store
        self.record = record
        self.folder = store.folder / record.id
        self._claims: dict[str, Claim] | None = None

    @property
    def id(self) -> str:
        return self.record.id

    # -- run.json ---------------------------------------------------------------------------
    def update(self, **fields: Any) -> RunRecord:
        """Change fields of ``run.json`` (``cost=`` takes a `Cost` or a dict of fields to set)."""
        self.store.workspace.require_writer()
        if "cost" in fields and isinstance(fields["cost"], dict):
            fields["cost"] = self.record.cost.model_copy(update=fields["cost"])
        record = RunRecord.model_validate({**self.record.model_dump(), **fields, "updated_at": now()})
        atomic_write_text(self.folder / "run.json", record.model_dump_json(indent=1))
        self.record = record
        return record

    # -- experiments ------------------------------------------------------------------------
    def experiment(self, model: "LoadedModel", spec: "ExperimentSpec",
                   runner: Callable[..., "ExperimentResult"] | None = None) -> "ExperimentResult":
        """The result of ``spec`` on ``model``: from the workspace cache if it ever ran there
        (a hit), else run now, cache and count a miss. Either way it is linked into this run."""
        self.store.workspace.require_writer()
        key = spec.cache_key(model.weights_hash)
        result = self.store.cache.get(key)
        hit = result is not None
        forwards = rows = 0
        if result is None:
            if runner is None:
                from tools.experiments.registry import run_experiment as runner
            counter = getattr(model, "forwards", None)
            mark = counter.mark() if counter is not None else None
            result = runner(model, spec)
            if counter is not None:
                forwards, rows = counter.since(mark)
            self.store.cache.put(result)
        self._link(result.key)
        cost = self.record.cost
        self.update(cost={"experiments": cost.experiments + 1, "forward_passes": cost.forward_passes + forwards,
                          "forward_rows": cost.forward_rows + rows,
                          "cache_hits": cost.cache_hits + hit, "cache_misses": cost.cache_misses + (not hit)})
        return result

    def record_result(self, result: "ExperimentResult") -> str:
        """Store a result computed elsewhere (cache and this run); return its key."""
        self.store.workspace.require_writer()
        if not self.store.cache.contains(result.key):
            self.store.cache.put(result)
        self._link(result.key)
        self.update(cost={"experiments": self.record.cost.experiments + 1})
        return result.key

    def _link(self, key: str) -> None:
        target = self.folder / "experiments"
        target.mkdir(exist_ok=True)
        # tensors first, JSON last: the JSON's presence means the pair is complete
        for suffix in (".safetensors", ".json"):
            source, dest = self.store.cache.folder / f"{key}{suffix}", target / f"{key}{suffix}"
            if dest.exists() or not source.exists():
                continue
            try:
                os.link(source, dest)
            except FileExistsError:
                pass
            except OSError:  # another filesystem, or links not supported: copy atomically
                atomic_write_bytes(dest, source.read_bytes())

    def experiment_keys(self) -> list[str]:
        return sorted(p.stem for p in (self.folder / "experiments").glob("*.json") if _KEY.match(p.stem))

    def load_experiment(self, key: str) -> "ExperimentResult":
        from tools.experiments.registry import load_result

        if key not in self.experiment_keys():
            raise UserInputError(f"run {self.id} has no experiment {key}")
        return load_result(self.folder / "experiments" / f"{key}.json")

    # -- claims -----------------------------------------------------------------------------
    def claims(self) -> list[Claim]:
        if self._claims is None:
            self._claims = {c.id: c for c in _read_claims(self.folder / "claims.jsonl")}
        return list(self._claims.values())

    def add_claim(self, claim: Claim | dict) -> Claim:
        """Add or replace (same ``id``) a claim; ``claims.jsonl`` is rewritten atomically."""
        self.store.workspace.require_writer()
        claim = claim if isinstance(claim, Claim) else Claim.model_validate({"run_id": self.id, **claim})
        if claim.run_id != self.id:
            raise UserInputError(f"claim {claim.id} belongs to run {claim.run_id}, not {self.id}")
        self.claims()
        self._claims[claim.id] = claim
        atomic_write_text(self.folder / "claims.jsonl",
                          "".join(c.model_dump_json() + "\n" for c in self._claims.values()))
        return claim

    # -- LLM calls --------------------------------------------------------------------------
    def log_llm_call(self, record: dict[str, Any]) -> None:
        """Append one LLM call's accounting (role, model, tokens, dollars) to ``llm_calls.jsonl``
        (rewritten atomically: a crash leaves the previous version, never half a line)."""
        self.store.workspace.require_writer()
        path = self.folder / "llm_calls.jsonl"
        previous = path.read_text(encoding="utf-8") if path.exists() else ""
        atomic_write_text(path, previous + json.dumps({"at": now(), **record}, sort_keys=True) + "\n")

    def llm_calls(self) -> list[dict[str, Any]]:
        path = self.folder / "llm_calls.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    # -- what the investigation measured (the graph's outcomes) ----------------------------
    def write_investigation(self, data: dict[str, Any]) -> None:
        """``investigation.json``: what each step of the investigation measured and the keys of
        the experiments it rests on, so a report can be rebuilt from this folder alone."""
        self.store.workspace.require_writer()
        atomic_write_text(self.folder / "investigation.json", json.dumps(data, indent=1, sort_keys=True))

    def investigation(self) -> dict[str, Any] | None:
        """The last ``investigation.json`` written, or None before the first."""
        path = self.folder / "investigation.json"
        if not path.exists():
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise StorageError(f"run {self.id}: investigation.json does not hold an object")
        return data

    # -- reports ----------------------------------------------------------------------------
    def write_report(self, name: str, text: str) -> Path:
        """Write ``reports/<name>`` (``report.md``, ``report.html``...) atomically."""
        self.store.workspace.require_writer()
        if not REPORT_NAMES.match(name):
            raise UserInputError(f"report name {name!r} must be a plain file name")
        folder = self.folder / "reports"
        folder.mkdir(exist_ok=True)
        return atomic_write_text(folder / name, text)

    def summary(self) -> RunSummary:
        verdicts = [c.verdict for c in self.claims()]
        r = self.record
        return RunSummary(id=r.id, question=r.question, model_id=r.model_id, status=r.status,
                          supported=verdicts.count("supported"), refuted=verdicts.count("refuted"),
                          inconclusive=verdicts.count("inconclusive"), created_at=r.created_at, cost=r.cost)


class RunStore:
    """The runs of one workspace."""

    def __init__(self, workspace: Workspace) -> None:
        self.workspace = workspace
        self.folder = workspace.runs_dir
        self.cache = ExperimentCache(workspace.cache_dir)
        if workspace.writer:  # only the lock holder may remove what killed writers left behind
            for root in (self.folder, self.cache.folder):
                clean_partial_files(root)

    def create(self, question: str, model_id: str, *, settings: dict[str, Any] | None = None,
               weights_hash: str | None = None, run_id: str | None = None) -> Run:
        self.workspace.require_writer()
        run_id = new_run_id() if run_id is None else run_id
        _check_run_id(run_id)
        record = RunRecord(id=run_id, question=question, model_id=model_id, weights_hash=weights_hash,
                           settings=settings or {})
        folder = self.folder / run_id
        try:
            folder.mkdir(parents=True)
        except FileExistsError:
            raise UserInputError(f"run {run_id} already exists in {self.folder}") from None
        except OSError as e:
            raise StorageError(f"cannot create run folder {folder}: {e.strerror or e}") from e
        try:
            atomic_write_text(folder / "run.json", record.model_dump_json(indent=1))
        except StorageError:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return Run(self, record)

    def open(self, run_id: str) -> Run:
        """A run for reading (and writing, in a writer workspace); damaged → `StorageError`."""
        _check_run_id(run_id)
        folder = self.folder / run_id
        if not (folder / "run.json").exists():
            raise UserInputError(f"no run {run_id!r} in {self.workspace.path} (see `sleuth runs`)")
        problem = check_run_folder(folder)
        if problem:
            raise StorageError(f"run {run_id} is damaged: {problem}")
        return Run(self, _read_record(folder))

    def list(self) -> list[RunSummary]:
        """Every run, oldest first; a damaged one is listed with ``damaged`` set and the reason."""
        if not self.folder.is_dir():
            return []
        rows = []
        for folder in sorted(p for p in self.folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
            problem = check_run_folder(folder)
            if problem:
                rows.append(RunSummary(id=folder.name, damaged=problem))
            else:
                rows.append(Run(self, _read_record(folder)).summary())
        return rows


def _check_run_id(run_id: str) -> None:
    if not _RUN_ID.match(run_id):
        raise UserInputError(f"run id {run_id!r} must be letters, digits, '.', '_' or '-'")


def _read_record(folder: Path) -> RunRecord:
    record = RunRecord.model_validate_json((folder / "run.json").read_bytes())
    if record.id != folder.name:
        raise ValueError(f"run.json names run {record.id!r}")
    return record


def _read_claims(path: Path) -> list[Claim]:
    if not path.exists():
        return []
    claims = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                claims.append(Claim.model_validate_json(line))
            except ValidationError as e:
                raise ValueError(f"line {number}: {_first_error(e)}") from None
    return claims


def check_run_folder(folder: Path) -> str | None:
    """Why ``folder`` is not a loadable run (None when it is). Cheap: parses every JSON file and
    checks each tensor file's header and length, without reading tensor data."""
    try:
        _read_record(folder)
    except FileNotFoundError:
        return "run.json is missing"
    except ValidationError as e:
        return f"run.json: {_first_error(e)}"
    except (ValueError, OSError) as e:
        return f"run.json: {e}"
    try:
        _read_claims(folder / "claims.jsonl")
    except (ValueError, OSError) as e:
        return f"claims.jsonl: {e}"
    investigation = folder / "investigation.json"
    if investigation.exists():
        try:
            if not isinstance(json.loads(investigation.read_bytes()), dict):
                return "investigation.json: not an object"
        except (ValueError, OSError) as e:
            return f"investigation.json: {e}"
    experiments = folder / "experiments"
    if experiments.is_dir():
        for path in sorted(experiments.glob("*.json")):
            try:
                data = json.loads(path.read_bytes())
                tensor_file = data.get("tensor_file")
                if tensor_file:
                    _check_safetensors(experiments / tensor_file)
            except FileNotFoundError as e:
                return f"experiments/{path.name}: {Path(e.filename).name} is missing"
            except (ValueError, OSError, AttributeError) as e:
                return f"experiments/{path.name}: {e}"
    return None


def _check_safetensors(path: Path) -> None:
    """Header parses and the file is exactly as long as the header says (catches truncation)."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{path.name} is truncated ({size} bytes)")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            raise ValueError(f"{path.name} is truncated (header of {n} bytes in a {size}-byte file)")
        try:
            header = json.loads(f.read(n))
        except ValueError:
            raise ValueError(f"{path.name} has a corrupted header") from None
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if size != 8 + n + end:
        raise ValueError(f"{path.name} is truncated or padded ({size} bytes, expected {8 + n + end})")


def _first_error(e: ValidationError) -> str:
    err = e.errors()[0]
    where = ".".join(str(p) for p in err.get("loc", ())) or "value"
    return f"{where}: {err.get('msg')}"


def clean_partial_files(root: Path) -> int:
    """Remove temporary files left by killed writers (only a writer may call this)."""
    removed = 0
    for path in root.rglob(f"*{TEMP_SUFFIX}"):
        try:
            path.unlink()
            removed += 1
        except OSError:
            pass
    return removed
