"""The parameters of each numbered notebook: one dataclass each, registered by notebook name.
Defaults equal the default profile (params/default.yaml), so a notebook opened in JupyterLab and
run top to bottom does what `bash run_all.sh` does. Fields hold literals only."""
from __future__ import annotations

import re
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


TOY_RUNS = ["llama-preln", "llama-postln", "standard-preln", "standard-postln"]


@dataclass
class PromptParams(NotebookParams):
    """The structured prompt set shared by notebooks 02, 03 and 05: the first n_tokens tokens of
    n_prompts articles of one corpus split, under each model's own tokenizer."""
    corpus: str = "gensim-wiki"
    corpus_path: str | None = None
    prompt_split: str = "test"
    n_prompts: int = 10
    n_tokens: int = 256
    bos_models: list[str] = field(default_factory=lambda: ["gemma3-270m", "minilm-l6"])
    batch_size: int = 4

    def check(self) -> None:
        super().check()
        _corpus_check(self)
        self.positive("n_prompts", "n_tokens", "batch_size")
        if self.prompt_split not in ("train", "validation", "test"):
            raise ParameterError(f"parameter 'prompt_split': {self.prompt_split!r} is not train, validation or test")
        if self.n_tokens < 4:
            raise ParameterError(f"parameter 'n_tokens' must be at least 4 for the geometry metrics, got {self.n_tokens}")


_HUB = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")
_TOY = re.compile(r"^toy:[\w.-]+(@\d+)?$")


def check_spec(spec: str) -> None:
    """Syntax of a model spec, checked before anything loads (loading checks the rest)."""
    from .models import OFFLINE_SPECS
    from .paths import resolve
    if spec in OFFLINE_SPECS or _TOY.match(spec) or _HUB.match(spec) or resolve(spec).is_dir():
        return
    raise ParameterError(f"unknown model spec {spec!r}; offline specs: {', '.join(OFFLINE_SPECS)}; "
                         "or toy:<run>[@<step>], a local model directory, or a hub id org/name[@revision]")


def _specs_check(p, names: list[str]) -> None:
    for name in names:
        for spec in getattr(p, name):
            try:
                check_spec(spec)
            except ParameterError as e:
                raise ParameterError(f"parameter {name!r}: {e}") from None


@register("02_extract_states")
@dataclass
class ExtractParams(PromptParams):
    """Extract and cache the token states of the toy models and the pretrained models."""
    models: list[str] = field(default_factory=lambda: ["smollm2-135m", "gemma3-270m", "minilm-l6"])
    toy_runs: list[str] = field(default_factory=lambda: list(TOY_RUNS))
    toy_random: bool = True             # also the random initialisation (checkpoint step 0)
    device: str = "cpu"
    device_map: str | None = None       # "auto": spread a large model over the GPUs (needs accelerate + GPUs)
    remote: bool = False                # nnsight remote=True on NDIF (needs a network and NDIF_API_KEY)

    def check(self) -> None:
        super().check()
        _specs_check(self, ["models"])


@register("03_geometry_metrics")
@dataclass
class GeometryParams(PromptParams):
    """Cosine similarity, intrinsic dimension and neighbourhood overlap of the toy models (random and
    trained) and SmolLM2 on the structured prompts."""
    models: list[str] = field(default_factory=lambda: ["smollm2-135m"])
    toy_runs: list[str] = field(default_factory=lambda: list(TOY_RUNS))
    toy_random: bool = True
    heatmap_prompt: int = 0
    heatmap_layers: list[float] = field(default_factory=lambda: [0.0, 0.5, 1.0])   # relative depth
    heatmap_tokens: int = 64             # the first tokens of the prompt shown in the heatmaps
    range_max: int = 256
    k_max: int = 31
    n_boot: int = 1000

    def check(self) -> None:
        super().check()
        _specs_check(self, ["models"])
        self.positive("heatmap_tokens", "range_max", "k_max", "n_boot")
        if not 0 <= self.heatmap_prompt < self.n_prompts:
            raise ParameterError(f"parameter 'heatmap_prompt' must be in [0, n_prompts), got {self.heatmap_prompt}")
        if any(not 0 <= x <= 1 for x in self.heatmap_layers):
            raise ParameterError("parameter 'heatmap_layers' holds relative depths in [0, 1]")


# ---- 04_shuffle_experiment and 05_model_comparison: classes go here (issue 6) ----


# ---- 06_training_trajectory_phases: class goes here (issue 7) ----


# ---- 07_attention_geometry: class goes here (issue 8) ----
