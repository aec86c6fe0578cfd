"""A child process for the crash test: writes N experiment records, acknowledging each.

``python -m tests._memory_writer WORKSPACE RUN_ID N [CHROMA_URL NAMESPACE]``

Record ``i`` is a logit-lens result whose spec differs by ``i`` (so its content hash does) and
whose tensors are those of one real run scaled by ``i + 1``; `expected_record` rebuilds it, so
the parent can check every stored record byte for byte. After a record is in the run store
*and* its summary in the vector memory, the child prints ``ack <i> <key>`` and flushes.
"""

from __future__ import annotations

import sys

from tests._experiment_models import tiny_loaded, word_pairs
from tools.experiments import LogitLensSpec
from tools.experiments.logit_lens import run_logit_lens


def base_result():
    model = tiny_loaded("gpt2")
    return run_logit_lens(model, LogitLensSpec(prompts=word_pairs(n=2)))


def expected_record(base, i: int):
    spec = base.spec.model_copy(update={"prompts": word_pairs(n=2, seed=1000 + i)})
    return base.model_copy(update={"spec": spec, "tensors": {k: v * (i + 1) for k, v in base.tensors.items()}})


def main(argv: list[str]) -> None:
    from memory.session import Memory

    workspace, run_id, n = argv[0], argv[1], int(argv[2])
    url, namespace = (argv[3] or None, argv[4]) if len(argv) > 3 else (None, None)
    base = base_result()
    with Memory.open(workspace, writer=True, chroma_url=url, namespace=namespace) as memory:
        run = memory.runs.create("crash test", base.provenance.model_id, run_id=run_id)
        print("ready", flush=True)
        for i in range(n):
            record = expected_record(base, i)
            key = run.record_result(record)
            memory.vectors.add_experiment_summary(
                key, f"logit lens record {i}", model_id=base.provenance.model_id,
                weights_hash=base.provenance.weights_hash, experiment="logit_lens", run_id=run_id)
            print(f"ack {i} {key}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
