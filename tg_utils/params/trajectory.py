"""The parameters of notebook 06 (training-trajectory phases), registered by notebook name: spectra
(the Tracing paper's document sequences by default, our windows as an option), the phase rule, token
convergence and context perturbation (Token Representation Evolution's procedures by default, ours as
named options)."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from .base import NotebookParams, ParameterError, register
from .notebooks import TOY_RUNS, _corpus_check, _placement_check, _specs_check

PAPER_WORD_REVISIONS = ["step64", "step256", "step1000", "step3000", "step18000", "step48000", "step78000",
                        "step108000", "step143000"]     # token_convergence_analysis.py:18-21


@register("06_training_trajectory_phases")
@dataclass
class TrajectoryParams(NotebookParams):
    """Geometry through training: spectral phases (RankMe, alpha-ReQ), token convergence and context
    perturbation at every checkpoint of the toy runs, and of hub models at a list of revisions."""
    corpus: str = "gensim-wiki"
    corpus_path: str | None = None
    toy_runs: list[str] = field(default_factory=lambda: list(TOY_RUNS) + ["llama-postln-nowarmup"])
    models: list[str] = field(default_factory=list)       # hub ids read at every revision below
    revisions: list[str] = field(default_factory=list)    # "step<N>", e.g. Pythia's step0 ... step143000
    model_warmup_steps: int | None = None                 # LR warmup of the hub models (Pythia: 1430)
    word_models: list[str] = field(default_factory=list)  # hub ids read for the word analyses only ...
    word_revisions: list[str] = field(default_factory=list)   # ... at these revisions (paper: 9 of Pythia-1b)
    device: str = "cpu"
    model_dtype: str = "float32"
    batch_tokens: int = 2048            # padded tokens per forward pass (windows of 128: 16 per batch)
    # spectra: the last-token state of each sequence of spectra_split
    spectra_sequences: str = "documents"  # "documents": every document (line) on its own, its first <=
    #   seq_len tokens, those of <= min_doc_tokens dropped (the paper) | "windows": n_seqs windows (ours)
    spectra_split: str = "validation"
    seq_len: int = 128
    min_doc_tokens: int = 10
    max_docs: int | None = None         # None: every qualifying document (the paper); else a seeded sample
    n_seqs: int = 512                   # windows only
    max_components: int | None = 2048   # PCA components kept (the paper: 2048); None: all
    spectra_shown: int = 4              # checkpoints per trajectory in the eigenspectrum figure
    # phase rule (tg_utils.metrics.trajectory.mark_phases; warmup_until = each run's LR warmup)
    phase_smooth: int = 3
    min_rankme_slope: float = 0.05
    min_alpha_slope: float = 0.02
    phase_min_len: int = 2
    # token convergence: words alone ("") and after each prefix
    words_path: str | None = "data/frequent_words.txt"   # None: the corpus' frequent words
    word_form: str = "bare"             # "bare": the word alone as the tokenizer sees it (the paper) |
    #   "spaced": " word", as inside running text (ours); words after a prefix are always spaced
    word_sampling: str = "sample"       # "sample": a seeded sample of n_sampled_words, buckets of >=
    #   min_bucket_words words (the paper) | "top": the first words_per_bucket of each bucket (ours)
    n_sampled_words: int = 5000
    min_bucket_words: int = 10
    word_buckets: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5, 6])
    words_per_bucket: int = 100         # word_sampling "top" only
    word_prefixes: list[str] = field(default_factory=lambda: ["", "The word is"])
    convergence_threshold: float = 0.9
    # context perturbation
    contexts_path: str | None = "data/contexts.json"      # None: contexts built from the corpus
    perturbation: str = "first_base"    # "first_base": sentence 0 against the others and against its
    #   n_swaps swapped variants (the paper) | "leave_one_out": every sentence a base, one swap each (ours)
    n_swaps: int = 5
    context_buckets: list[int] = field(default_factory=lambda: [2, 3, 4, 5, 6])
    min_contexts: int = 5
    min_context_words: int = 20
    context_words_per_bucket: int | None = 20
    # memorization (issue 24; experiments/nb06_memorization): toy runs only; probes of memo_prefix_tokens
    # + memo_continuation_tokens tokens, memo_probes of each kind (seen in a batch, training split unseen,
    # validation), the model's log-likelihood of the continuation beside its ∞-gram log-probability
    memorization: bool = True
    memo_probes: int = 200
    memo_prefix_tokens: int = 16
    memo_continuation_tokens: int = 8

    CHOICES = {"spectra_sequences": ("documents", "windows"), "word_form": ("bare", "spaced"),
               "word_sampling": ("sample", "top"), "perturbation": ("first_base", "leave_one_out")}

    def check(self) -> None:
        super().check()
        _corpus_check(self)
        for name, allowed in self.CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ParameterError(f"parameter {name!r}: {getattr(self, name)!r} is not one of {list(allowed)}")
        self.positive("batch_tokens", "n_seqs", "seq_len", "spectra_shown", "phase_min_len", "words_per_bucket",
                      "min_contexts", "min_context_words", "context_words_per_bucket", "min_rankme_slope",
                      "min_alpha_slope", "max_docs", "max_components", "n_sampled_words", "min_bucket_words",
                      "n_swaps")
        if self.min_doc_tokens < 0:
            raise ParameterError(f"parameter 'min_doc_tokens' must be >= 0, got {self.min_doc_tokens}")
        if not self.toy_runs and not self.models and not self.word_models:
            raise ParameterError("parameters 'toy_runs' and 'models' are both empty: nothing to trace")
        _specs_check(self, ["models", "word_models"])
        for ms, rs in (("models", "revisions"), ("word_models", "word_revisions")):
            if any("@" in m for m in getattr(self, ms)):
                raise ParameterError(f"parameter '{ms}': give hub ids without @revision; list the revisions "
                                     f"in '{rs}'")
            if getattr(self, ms) and len(getattr(self, rs)) < 2:
                raise ParameterError(f"parameter '{rs}' must list at least two revisions (step<N>) for '{ms}'")
            bad = [r for r in getattr(self, rs) if not re.match(r"^step\d+", r)]
            if bad:
                raise ParameterError(f"parameter '{rs}': {bad[0]!r} does not name a step; use 'step<N>'")
        if self.spectra_split not in ("train", "validation", "test"):
            raise ParameterError(f"parameter 'spectra_split': {self.spectra_split!r} is not train, validation or test")
        if self.spectra_sequences == "windows" and self.n_seqs < 14:
            raise ParameterError(f"parameter 'n_seqs' must be at least 14 (alpha-ReQ fits from rank 12 and "
                                 f"scores from rank 13), got {self.n_seqs}")
        if self.max_docs is not None and self.max_docs < 14:
            raise ParameterError(f"parameter 'max_docs' must be at least 14 (alpha-ReQ fits from rank 12 and "
                                 f"scores from rank 13) or None (every document), got {self.max_docs}")
        if self.phase_smooth < 1 or self.phase_smooth % 2 == 0:
            raise ParameterError(f"parameter 'phase_smooth' must be an odd positive integer, got {self.phase_smooth}")
        if not self.word_buckets or any(b < 1 for b in self.word_buckets):
            raise ParameterError("parameter 'word_buckets' must list token counts >= 1")
        if any(b < 2 for b in self.context_buckets):
            raise ParameterError("parameter 'context_buckets' holds multi-token counts (>= 2)")
        if not self.word_prefixes or len(set(self.word_prefixes)) != len(self.word_prefixes):
            raise ParameterError("parameter 'word_prefixes' must list distinct prefixes ('' = the word alone)")
        if not 0 < self.convergence_threshold <= 1:
            raise ParameterError(f"parameter 'convergence_threshold' must be in (0, 1], got {self.convergence_threshold}")
        if self.perturbation == "first_base" and self.min_contexts < 2:
            raise ParameterError("parameter 'min_contexts' must be at least 2 for perturbation='first_base' (a base "
                                 "sentence and another context)")
        self.positive("memo_probes", "memo_prefix_tokens", "memo_continuation_tokens")
        if not isinstance(self.memorization, bool):
            raise ParameterError(f"parameter 'memorization' must be true or false, got {self.memorization!r}")
        if self.memorization and self.memo_probes < 3:
            raise ParameterError(f"parameter 'memo_probes' must be at least 3 (a Spearman correlation per kind), "
                                 f"got {self.memo_probes}")
        _placement_check(self)
