"""``sleuth bench``: our experiments timed side by side with a reference, on the same weights.

Each case runs one workload twice — through ``tools/`` ("ours") and the reference way — and
reports both times, their ratio (**ours ÷ reference**: below 1 ours is faster) against the
issue's target, and the largest difference between the two sides' numbers, so a speed-up
bought with a wrong answer shows::

    act_patch_heads.<model>       run_activation_patching, one head sweep (every head, all
                                  positions, denoising)  vs  TransformerLens 4's
                                  patching.get_act_patch_attn_head_out_all_pos on a
                                  TransformerBridge in compatibility mode (plus the clean
                                  run_with_cache and the corrupted baseline it needs)
    attribution_patching.<model>  run_attribution_patching for every head and MLP  vs  one
                                  bare Hugging Face forward of the clean batch
    behaviour.<model>             run_behaviour on the clean prompts  vs  a bare Hugging Face
                                  forward of the same batch

``max_abs_diff`` compares logit differences (answer − foil at the last token): per head
the mean patched one, and the clean and corrupted ones, and the normalised effects, for
patching; per prompt the clean one for the others. Compatibility mode centres the
unembedding, which shifts raw logits but no logit difference.

Workloads: the default organism (32 IOI prompt pairs), gemma-3-270m (8 pairs) and a
randomly initialised GPT-2-small-sized model (12 layers × 12 heads, d_model 768, the
organism's word-level tokenizer, saved to a temporary folder so TransformerLens can boot
it; 8 pairs). Prompts are IOI prompts of one token length, so neither side pads. Models are
read from local folders only, with the Hub switched off.

Timing: each side runs once to warm up (its numbers are the ones compared), then
``repeats`` more times, alternating ours and the reference so that load on a shared
machine falls on both; the best time is reported, with the median beside it. Everything
runs under ``torch.no_grad`` except attribution patching's own backward pass.

TransformerLens is a dev dependency: without it the TransformerLens cases are reported as
skipped with the reason, and the others run. This module imports it only when a case needs it.
It lives in ``evals/`` (which may use everything) rather than ``tools/``, so that ``tools/``
never reaches into the reference implementations; ``sleuth bench`` imports it lazily.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import statistics
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import torch

from tools.errors import UserInputError

if TYPE_CHECKING:
    from tools.experiments.prompts import PromptBatch, PromptPairs
    from tools.loading import LoadedModel

logger = logging.getLogger(__name__)

CASE_KINDS = ("act_patch_heads", "attribution_patching", "behaviour")
TARGETS = {
    # kind -> (largest acceptable ours/reference ratio, how the issue words it)
    "act_patch_heads.organism-default": (1 / 3, "ours ≥ 3× faster"),
    "act_patch_heads.gemma-3-270m": (1 / 4, "ours ≥ 4× faster"),
    "act_patch_heads.gpt2-small-random": (1 / 2, "ours ≥ 2× faster"),
    "attribution_patching": (4.0, "≤ 4× one clean forward"),
    "behaviour": (1.3, "≤ 1.3× a bare HF forward"),
}


# -- results -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CaseResult:
    """One side-by-side measurement."""

    name: str
    """``<kind>.<workload>`` (``act_patch_heads.organism-default``)."""
    ours_s: float | None
    """Best wall time of ours, seconds (None when skipped)."""
    reference_s: float | None
    """Best wall time of the reference, seconds."""
    ratio: float | None
    """``ours_s / reference_s``: below 1, ours is faster."""
    max_abs_diff: float | None
    """Largest |ours − reference| over the compared numbers (logit differences, effects)."""
    target: str = ""
    """The issue's target in words."""
    max_ratio: float | None = None
    """The largest ``ratio`` that meets the target."""
    meets: bool | None = None
    """Whether ``ratio <= max_ratio`` (None when skipped)."""
    ours_median_s: float | None = None
    reference_median_s: float | None = None
    note: str = ""
    """Why the case was skipped, or what the workload was."""


@dataclass(frozen=True)
class BenchReport:
    """Every case, the attribution-vs-activation Spearman figure, and how it was run."""

    cases: tuple[CaseResult, ...]
    spearman_attr_vs_act: float | None
    """Spearman correlation of attribution- and activation-patching head effects on the
    default organism's IOI prompts (`evals.attribution_vs_activation`), None if unavailable."""
    settings: dict[str, Any] = field(default_factory=dict)
    """Repeats, torch threads, versions: what a reader needs to compare two runs."""

    def as_json(self) -> dict[str, Any]:
        """``{"cases": [...], "spearman_attr_vs_act": ..., "settings": {...}}`` (NaN -> None)."""
        return {"cases": [_finite(asdict(case)) for case in self.cases],
                "spearman_attr_vs_act": _finite_number(self.spearman_attr_vs_act),
                "settings": self.settings}

    def table(self) -> str:
        """A fixed-width text table, one line per case."""
        header = (f"{'case':<38}{'ours s':>9}{'ref s':>9}{'ratio':>8}  {'target':<25}"
                  f"{'max|diff|':>10}  ok")
        lines = [header, "-" * len(header)]
        for c in self.cases:
            if c.ours_s is None:
                lines.append(f"{c.name:<38}{'—':>9}{'—':>9}{'—':>8}  {c.target:<25}{'—':>10}  "
                             f"skipped: {c.note}")
                continue
            ok = "yes" if c.meets else "NO"
            lines.append(f"{c.name:<38}{c.ours_s:>9.3f}{c.reference_s:>9.3f}{c.ratio:>8.3f}  "
                         f"{c.target:<25}{_fmt(c.max_abs_diff):>10}  {ok}")
        notes = [f"  {c.name}: {c.note}" for c in self.cases if c.note and c.ours_s is not None]
        if notes:
            lines += ["ratio = ours ÷ reference (below 1: ours faster); workloads:"] + notes
        spearman = self.spearman_attr_vs_act
        lines.append(f"spearman_attr_vs_act (default organism, IOI heads): "
                     f"{'—' if spearman is None or math.isnan(spearman) else f'{spearman:.3f}'}")
        lines.append("settings: " + ", ".join(f"{k}={v}" for k, v in self.settings.items()))
        return "\n".join(lines)


# -- workloads ---------------------------------------------------------------------------------


@dataclass
class Workload:
    """One model, loaded by us, with the folder TransformerLens boots and the prompts."""

    name: str
    model: "LoadedModel"
    folder: str
    pairs: "PromptPairs"
    """IOI prompt pairs of one token length."""
    batch: "PromptBatch"
    """``pairs`` tokenised by our tokenizer: the ids both sides run."""


@dataclass(frozen=True)
class BenchConfig:
    """What to run: prompt counts and the random model's size (the quick smoke run shrinks them)."""

    organism_pairs: int = 32
    gemma_pairs: int = 8
    random_pairs: int = 8
    random_size: tuple[int, int, int] = (12, 12, 768)
    """``(n_layers, n_heads, d_model)`` of the random GPT-2."""
    random_vocab: int = 50257
    include_gemma: bool = True
    spearman_pairs: int = 32
    repeats: int = 3


QUICK = BenchConfig(organism_pairs=4, random_pairs=2, random_size=(2, 2, 32), random_vocab=0,
                    include_gemma=False, spearman_pairs=8, repeats=1)
"""A smoke run in seconds: small prompt sets, a 2-layer random model, no gemma, one repeat."""


def run_bench(
    *, quick: bool = False, repeats: int | None = None, only: Sequence[str] = (),
    threads: int | None = None,
) -> BenchReport:
    """Run every case (or those whose name contains one of ``only``) and the Spearman figure.

    Args:
        quick: the smoke configuration (`QUICK`) instead of the issue's workloads.
        repeats: timed repeats per side after the warm-up (default 3; 1 when quick).
        only: substrings of case names to keep (``"gemma"``, ``"behaviour"``).
        threads: torch intra-op threads for the run (restored afterwards); default torch's.

    Raises:
        UserInputError: for ``repeats < 1``, ``threads < 1``, or ``only`` matching no case.
    """
    config = QUICK if quick else BenchConfig()
    repeats = config.repeats if repeats is None else repeats
    if repeats < 1:
        raise UserInputError(f"--repeats must be at least 1, not {repeats}")
    if threads is not None and threads < 1:
        raise UserInputError(f"--threads must be at least 1, not {threads}")
    names = _case_names(config)
    wanted = [n for n in names if not only or any(o in n for o in only)]
    if not wanted:
        raise UserInputError(f"--only {' '.join(only)} matches no case; cases: {', '.join(names)}")
    want_spearman = not only or any("spearman" in o for o in only)

    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        with _offline(), torch.no_grad():
            cases, spearman = _run_cases(config, wanted, repeats, want_spearman)
    finally:
        torch.set_num_threads(previous_threads)
    settings = {"repeats": repeats, "timing": "best of repeats after one warm-up",
                "torch_threads": threads or previous_threads, "quick": quick,
                "torch": torch.__version__, "device": "cpu"}
    settings.update(_versions())
    return BenchReport(cases=tuple(cases), spearman_attr_vs_act=spearman, settings=settings)


def _case_names(config: BenchConfig) -> list[str]:
    workloads = ["organism-default"] + (["gemma-3-270m"] if config.include_gemma else [])
    names = [f"act_patch_heads.{w}" for w in workloads] + ["act_patch_heads.gpt2-small-random"]
    names += [f"attribution_patching.{w}" for w in workloads]
    names += [f"behaviour.{w}" for w in workloads]
    return names


def _run_cases(config: BenchConfig, wanted: list[str], repeats: int,
               want_spearman: bool) -> tuple[list[CaseResult], float | None]:
    results: dict[str, CaseResult] = {}
    spearman = None
    for workload_name in ("organism-default", "gemma-3-270m", "gpt2-small-random"):
        mine = [n for n in wanted if n.endswith("." + workload_name)]
        need_spearman = want_spearman and workload_name == "organism-default"
        if not mine and not need_spearman:
            continue
        with _workload(workload_name, config) as workload:
            for name in mine:
                logger.info("bench: %s", name)
                results[name] = _run_case(name, workload, repeats)
            if need_spearman:
                spearman = _spearman(workload.model, config.spearman_pairs)
    return [results[n] for n in wanted], spearman


def _run_case(name: str, workload: Workload, repeats: int) -> CaseResult:
    kind = name.split(".", 1)[0]
    max_ratio, target = TARGETS.get(name) or TARGETS[kind]
    runner = {"act_patch_heads": _act_patch_heads, "attribution_patching": _attribution_patching,
              "behaviour": _behaviour}[kind]
    try:
        timing, diff, note = runner(workload, repeats)
    except _Skip as skip:
        return CaseResult(name=name, ours_s=None, reference_s=None, ratio=None, max_abs_diff=None,
                          target=target, max_ratio=max_ratio, note=str(skip))
    ratio = timing.ours_best / timing.reference_best
    return CaseResult(
        name=name, ours_s=timing.ours_best, reference_s=timing.reference_best, ratio=ratio,
        max_abs_diff=diff, target=target, max_ratio=max_ratio, meets=ratio <= max_ratio,
        ours_median_s=timing.ours_median, reference_median_s=timing.reference_median, note=note,
    )


class _Skip(Exception):
    """A case that cannot run here (a missing dev dependency); the message says why."""


# -- the cases ---------------------------------------------------------------------------------


def _act_patch_heads(workload: Workload, repeats: int) -> tuple["_Timing", float, str]:
    from tools.experiments.activation_patching import (
        ActivationPatchingSpec,
        PatchSweep,
        run_activation_patching,
    )

    patching = _transformer_lens_patching()
    bridge = _boot_bridge(workload.folder)
    batch = workload.batch
    spec = ActivationPatchingSpec(prompts=workload.pairs, sweeps=(PatchSweep(site="head"),))

    def logit_diff(logits: torch.Tensor) -> torch.Tensor:  # [batch, pos, vocab] -> [batch]
        return _last_logit_diff(logits, batch.answer, batch.foil)

    def ours():
        return run_activation_patching(workload.model, spec)

    def reference():
        clean_logits, clean_cache = bridge.run_with_cache(batch.clean)
        corrupted = logit_diff(bridge.run_with_hooks(batch.corrupted, fwd_hooks=[]))
        with contextlib.redirect_stderr(io.StringIO()):  # its tqdm progress bar
            patched = patching.get_act_patch_attn_head_out_all_pos(
                bridge, batch.corrupted, clean_cache, lambda logits: logit_diff(logits).mean())
        return patched, logit_diff(clean_logits), corrupted

    timing = _time_pair(ours, reference, repeats)
    result = timing.ours_output
    patched, clean, corrupted = timing.reference_output
    clean_mean, corrupted_mean = clean.mean(), corrupted.mean()
    ours_patched = result.tensors["logit_diff.head"].mean(-1)  # [layer, head]
    diffs = [(ours_patched - patched).abs().max(),
             (result.tensors["clean_logit_diff"] - clean).abs().max(),
             (result.tensors["corrupted_logit_diff"] - corrupted).abs().max()]
    if result.normalisable:
        effect = (patched - corrupted_mean) / (clean_mean - corrupted_mean)
        diffs.append((result.tensors["effect.head"] - effect).abs().max())
    adapter = workload.model.adapter
    note = (f"{batch.size} pairs × {batch.clean.shape[1]} tokens, "
            f"{adapter.n_layers}×{adapter.n_heads} heads")
    return timing, float(max(diffs)), note


def _attribution_patching(workload: Workload, repeats: int) -> tuple["_Timing", float, str]:
    try:
        from tools.experiments.attribution_patching import (
            AttributionPatchingSpec,
            run_attribution_patching,
        )
    except ImportError as error:
        raise _Skip(f"tools.experiments.attribution_patching is not available ({error})") from None
    from tools.experiments.activation_patching import PatchSweep

    batch = workload.batch
    spec = AttributionPatchingSpec(prompts=workload.pairs,
                                   sweeps=(PatchSweep(site="head"), PatchSweep(site="mlp")))
    hf_model = workload.model.hf_model

    def ours():
        with torch.enable_grad():
            return run_attribution_patching(workload.model, spec)

    def reference():
        return _last_logit_diff(hf_model(input_ids=batch.clean).logits, batch.answer, batch.foil)

    timing = _time_pair(ours, reference, repeats)
    diff = (timing.ours_output.tensors["clean_logit_diff"] - timing.reference_output).abs().max()
    return timing, float(diff), f"{batch.size} pairs × {batch.clean.shape[1]} tokens, heads + MLPs"


def _behaviour(workload: Workload, repeats: int) -> tuple["_Timing", float, str]:
    from tools.experiments.behaviour import BehaviourExperimentSpec, run_behaviour
    from tools.experiments.prompts import PromptPairs, tokenize_prompts

    batch, pairs = workload.batch, workload.pairs
    clean_only = PromptPairs(clean=pairs.clean, answer=pairs.answer, foil=pairs.foil)
    spec = BehaviourExperimentSpec(prompts=clean_only)
    hf_model = workload.model.hf_model

    def ours():
        return run_behaviour(workload.model, spec, batch_size=batch.size)

    def reference():
        return _last_logit_diff(hf_model(input_ids=batch.clean).logits, batch.answer, batch.foil)

    timing = _time_pair(ours, reference, repeats)
    diff = (timing.ours_output.tensors["logit_diff"] - timing.reference_output).abs().max()
    # Ours starts from text; the bare forward from ids. Say how much of ours is tokenising.
    tokenize = min(_seconds(lambda: tokenize_prompts(workload.model, clean_only))
                   for _ in range(repeats + 1))
    return timing, float(diff), (f"{batch.size} prompts × {batch.clean.shape[1]} tokens; "
                                 f"tokenising them from text takes {tokenize:.3f} s of ours")


def _spearman(model: "LoadedModel", n_prompts: int) -> float | None:
    try:
        from evals.attribution_vs_activation import spearman_attr_vs_act
    except ImportError as error:
        logger.warning("no Spearman figure: %s", error)
        return None
    with torch.enable_grad():
        return float(spearman_attr_vs_act(model, n_prompts=n_prompts, seed=0))


# -- timing ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Timing:
    ours_best: float
    ours_median: float
    reference_best: float
    reference_median: float
    ours_output: Any
    reference_output: Any


def _time_pair(ours: Callable[[], Any], reference: Callable[[], Any], repeats: int) -> _Timing:
    """One warm-up call of each (whose outputs are returned), then ``repeats`` alternating timed calls."""
    ours_output, reference_output = ours(), reference()
    ours_times, reference_times = [], []
    for _ in range(repeats):
        ours_times.append(_seconds(ours))
        reference_times.append(_seconds(reference))
    return _Timing(min(ours_times), statistics.median(ours_times), min(reference_times),
                   statistics.median(reference_times), ours_output, reference_output)


def _seconds(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# -- helpers -----------------------------------------------------------------------------------


def _last_logit_diff(logits: torch.Tensor, answer: torch.Tensor, foil: torch.Tensor) -> torch.Tensor:
    """``[batch, pos, vocab]`` (prompts of one length) -> answer − foil at the last position."""
    last = logits[:, -1].float()
    rows = torch.arange(last.shape[0])
    return last[rows, answer] - last[rows, foil]


@contextlib.contextmanager
def _workload(name: str, config: BenchConfig) -> Iterator[Workload]:
    """Load one workload (the random model lives in a temporary folder for the duration)."""
    from tools.loading import load_model

    if name == "gpt2-small-random":
        with tempfile.TemporaryDirectory(prefix="sleuth-bench-") as folder:
            _save_random_gpt2(Path(folder), config)
            model = load_model(folder)
            yield _make_workload(name, model, folder, config.random_pairs)
        return
    model = load_model(name)
    n = config.organism_pairs if name == "organism-default" else config.gemma_pairs
    yield _make_workload(name, model, model.source, n)


def _make_workload(name: str, model: "LoadedModel", folder: str, n: int) -> Workload:
    from tools.experiments.prompts import tokenize_prompts

    pairs = one_length_ioi(model, n, seed=0)
    batch = tokenize_prompts(model, pairs, need_corrupted=True, aligned=True)
    return Workload(name=name, model=model, folder=folder, pairs=pairs, batch=batch)


def one_length_ioi(model: "LoadedModel", n: int, seed: int) -> "PromptPairs":
    """``n`` held-out IOI prompt pairs that all tokenise to the most common clean length.

    Raises:
        UserInputError: when fewer than ``n`` prompts of that length turn up.
    """
    from tools.experiments.prompts import PromptPairs
    from tools.tasks import get_task

    items = get_task("ioi").generate(8 * n, split="heldout", seed=seed, tokenizer=model.tokenizer)
    lengths = [len(model.tokenizer(item.clean)["input_ids"]) for item in items]
    length = Counter(lengths).most_common(1)[0][0]
    chosen = [item for item, k in zip(items, lengths) if k == length][:n]
    if len(chosen) < n:
        raise UserInputError(f"only {len(chosen)} IOI prompts of one token length ({length}) for "
                             f"{model.model_id}; ask for fewer pairs")
    return PromptPairs(clean=tuple(i.clean for i in chosen), corrupted=tuple(i.corrupted for i in chosen),
                       answer=tuple(i.answer for i in chosen), foil=tuple(i.foil for i in chosen))


def _save_random_gpt2(folder: Path, config: BenchConfig) -> None:
    """A randomly initialised GPT-2 (seed 0) with the default organism's tokenizer, saved to ``folder``."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from tools.loading import resolve_model_source

    organism, _ = resolve_model_source("organism-default")
    tokenizer = AutoTokenizer.from_pretrained(organism, local_files_only=True)
    n_layers, n_heads, d_model = config.random_size
    vocab = max(config.random_vocab, len(tokenizer))
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=n_layers, n_head=n_heads, n_embd=d_model,
                                       vocab_size=vocab, n_positions=1024,
                                       bos_token_id=tokenizer.bos_token_id or 0,
                                       eos_token_id=tokenizer.eos_token_id or 0))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _transformer_lens_patching() -> Any:
    try:
        from transformer_lens import patching
    except ImportError as error:
        raise _Skip(f"TransformerLens 4 is not installed ({error}); pip install "
                    "'transformer-lens>=4'") from None
    return patching


def _boot_bridge(folder: str) -> Any:
    """TransformerLens's `TransformerBridge` of a local folder, CPU float32, compatibility mode.

    Value biases stay in ``hook_z`` (``fold_value_biases=False``), where our heads read them
    (see `evals.reference.transformerlens`); patching numbers are the same either way.
    """
    from transformer_lens.model_bridge import TransformerBridge

    bridge = TransformerBridge.boot_transformers(str(folder), device="cpu", dtype=torch.float32)
    bridge.eval()
    bridge.enable_compatibility_mode(disable_warnings=True, fold_value_biases=False)
    return bridge


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """The Hugging Face Hub switched off for the duration (environment and hub constant)."""
    names = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    saved = {name: os.environ.get(name) for name in names}
    os.environ.update(names)
    constants = None
    try:
        import huggingface_hub.constants as constants

        saved_constant = constants.HF_HUB_OFFLINE
        constants.HF_HUB_OFFLINE = True
    except ImportError:
        pass
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if constants is not None:
            constants.HF_HUB_OFFLINE = saved_constant


def _versions() -> dict[str, str]:
    import importlib.metadata

    out = {}
    for package in ("nnsight", "transformers", "transformer-lens"):
        try:
            out[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            out[package] = "not installed"
    return out


def _finite_number(value: float | None) -> float | None:
    return None if value is None or (isinstance(value, float) and not math.isfinite(value)) else value


def _finite(row: dict[str, Any]) -> dict[str, Any]:
    return {k: _finite_number(v) if isinstance(v, float) else v for k, v in row.items()}


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.1e}"
