"""The parameters of each numbered notebook: one dataclass each, registered by notebook name.
Defaults equal the default profile (params/default.yaml), so a notebook opened in JupyterLab and
run top to bottom does what `bash run_all.sh` does. Fields hold literals only."""
from __future__ import annotations

from dataclasses import dataclass, field

from .params import NotebookParams, ParameterError, register


def _corpus_check(p) -> None:
    if p.corpus not in ("gensim-wiki", "wikitext", "text"):
        raise ParameterError(f"parameter 'corpus': unknown source {p.corpus!r}; "
                             "use 'gensim-wiki', 'wikitext' (with corpus_path) or 'text' (with corpus_path)")
    if p.corpus != "gensim-wiki" and not p.corpus_path:
        raise ParameterError(f"parameter 'corpus_path' is needed for corpus={p.corpus!r}")


@register("01_train_toy_models")
@dataclass
class TrainToyParams(NotebookParams):
    """Train the four toy architectures (plus LLaMA-PostLN without warmup) on one corpus."""
    corpus: str = "gensim-wiki"
    corpus_path: str | None = None
    vocab_size: int = 8192
    presets: list[str] = field(default_factory=lambda: [
        "llama-preln", "llama-postln", "standard-preln", "standard-postln"])
    no_warmup_run: bool = True          # also train llama-postln with warmup_steps = 0
    n_layer: int = 6
    d_model: int = 128
    n_head: int = 4
    d_ff: int = 512
    context: int = 256
    dropout: float = 0.0
    max_steps: int = 160
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 3e-3
    warmup_steps: int = 16
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    eval_every: int = 40
    eval_tokens: int = 8192
    save_every: int = 40

    def check(self) -> None:
        super().check()
        _corpus_check(self)
        self.positive("vocab_size", "n_layer", "d_model", "n_head", "d_ff", "context", "max_steps",
                      "batch_size", "grad_accum", "lr", "eval_every", "eval_tokens", "save_every")
        if self.d_model % self.n_head:
            raise ParameterError(f"parameter 'd_model' ({self.d_model}) must be divisible by 'n_head' ({self.n_head})")
        if not self.presets:
            raise ParameterError("parameter 'presets' must name at least one preset")
