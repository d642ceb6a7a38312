"""The parameters of each numbered notebook: one dataclass each, registered by notebook name.
Defaults equal the default profile (params/default.yaml), so a notebook opened in JupyterLab and
run top to bottom does what `bash run_all.sh` does. Fields hold literals only."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..models.spec import ModelSpec, ModelSpecError
from ..paths import resolve
from .base import NotebookParams, ParameterError, register
from .checks import corpus_check as _corpus_check, seeds_check


_DEVICE = re.compile(r"cpu|cuda(:\d+)?|mps|meta")
DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")
MODEL_DTYPES = ("float32", "bfloat16", "float16")


def _placement_check(p, dtypes: tuple[str, ...] = MODEL_DTYPES) -> None:
    """device ('cpu', 'cuda', 'cuda:<n>', 'mps'), device_map (None or one of DEVICE_MAPS, where the notebook
    has one) and model_dtype (one of `dtypes`). Whether the device exists here is the preflight's check
    (tg_utils.preflight): a profile for a GPU machine still validates on a laptop."""
    if not _DEVICE.fullmatch(p.device):
        raise ParameterError(f"parameter 'device': {p.device!r} is not a device; use 'cpu', 'cuda' or 'cuda:<n>'")
    if p.device == "meta" and not getattr(p, "remote", False):
        raise ParameterError("parameter 'device': 'meta' (structure only, no weights) needs remote: true")
    dm = getattr(p, "device_map", None)
    if dm is not None and dm not in DEVICE_MAPS:
        raise ParameterError(f"parameter 'device_map': {dm!r} is not one of {list(DEVICE_MAPS)} (or null)")
    if p.model_dtype not in dtypes:
        raise ParameterError(f"parameter 'model_dtype': {p.model_dtype!r} is not {', '.join(dtypes[:-1])} or "
                             f"{dtypes[-1]}")


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
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])   # seeds[0] = seed: the folders later notebooks read
    seed_runs: list[str] = field(default_factory=lambda: ["llama-preln", "standard-preln"])  # trained with every seed
    n_layer: int = 6
    d_model: int = 128
    n_head: int = 4
    d_ff: int = 512
    context: int = 256
    dropout: float = 0.0
    tie_embeddings: bool = False         # lm_head shares the embedding matrix (the original analyzer ties them)
    max_steps: int = 160
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 3e-3                     # peak learning rate of every run not named in lr_by_run
    lr_by_run: dict[str, float] = field(default_factory=lambda: {
        "llama-postln": 1e-3, "standard-postln": 7e-4, "llama-postln-nowarmup": 1e-3})   # benchmarks/lr_sweep.py
    warmup_steps: int = 16
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    eval_every: int = 40
    eval_tokens: int = 8192
    save_every: int = 40
    device: str = "cpu"
    model_dtype: str = "float32"         # bfloat16: the forward passes under torch.autocast (weights stay float32)

    def check(self) -> None:
        super().check()
        _corpus_check(self)
        _placement_check(self, ("float32", "bfloat16"))
        self.positive("vocab_size", "n_layer", "d_model", "n_head", "d_ff", "context", "max_steps",
                      "batch_size", "grad_accum", "lr", "eval_every", "eval_tokens", "save_every")
        if self.d_model % self.n_head:
            raise ParameterError(f"parameter 'd_model' ({self.d_model}) must be divisible by 'n_head' ({self.n_head})")
        if not self.presets:
            raise ParameterError("parameter 'presets' must name at least one preset")
        runs = list(self.presets) + ["llama-postln-nowarmup"]
        seeds_check(self, runs if self.no_warmup_run else runs[:-1])
        for run, lr in self.lr_by_run.items():
            if run not in runs:
                raise ParameterError(f"parameter 'lr_by_run': {run!r} is not a run; runs: {', '.join(runs)}")
            if not lr > 0:
                raise ParameterError(f"parameter 'lr_by_run': the learning rate of {run!r} must be > 0, got {lr}")


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
    device: str = "cpu"
    device_map: str | None = None        # "auto": spread a large model over the GPUs (needs accelerate + GPUs)
    model_dtype: str = "float32"         # the weights' dtype (load_model); states are stored float32 and the
                                         # metrics measure them in float64
    # which documents (tg_utils.data.selection): "per_model" (ours): each model the first n_prompts articles
    # long enough under its own tokenizer | "common" (The Geometry of Tokens): every model the same documents,
    # those with >= n_tokens tokens under the tokenizer of every model of selection_models (empty: models)
    documents: str = "per_model"
    selection_models: list[str] = field(default_factory=list)
    document_draw: str = "first"         # "common": the first n_prompts qualifying documents | "random": a
                                         # seeded draw (src/extract.py:94-98)
    document_indices: list[int] = field(default_factory=list)   # "common": these documents (row indices of the
                                         # split), e.g. token_geometry's subset_indices.npy; the draw is then unused
    expected_documents: int | None = None   # "common": the count the paper reports, printed beside ours

    def check(self) -> None:
        super().check()
        _corpus_check(self)
        _placement_check(self)
        self.positive("n_prompts", "n_tokens", "batch_size", "expected_documents")
        _documents_check(self)
        if self.prompt_split not in ("train", "validation", "test"):
            raise ParameterError(f"parameter 'prompt_split': {self.prompt_split!r} is not train, validation or test")
        if self.n_tokens < 4:
            raise ParameterError(f"parameter 'n_tokens' must be at least 4 for the geometry metrics, got {self.n_tokens}")


def _documents_check(p) -> None:
    if p.documents not in ("per_model", "common"):
        raise ParameterError(f"parameter 'documents': {p.documents!r} is not 'per_model' or 'common'")
    if p.document_draw not in ("first", "random"):
        raise ParameterError(f"parameter 'document_draw': {p.document_draw!r} is not 'first' or 'random'")
    if any(i < 0 for i in p.document_indices) or len(set(p.document_indices)) != len(p.document_indices):
        raise ParameterError("parameter 'document_indices': distinct row indices >= 0, e.g. [587, 718, 1110]")
    if p.documents == "per_model" and (p.document_indices or p.selection_models or p.document_draw != "first"):
        raise ParameterError("parameters 'document_indices', 'selection_models' and 'document_draw' apply to "
                             "documents: common; set documents: common or remove them")
    for spec in p.selection_models:
        try:
            check_spec(spec)
        except ParameterError as e:
            raise ParameterError(f"parameter 'selection_models': {e}") from None


def check_spec(spec: str) -> None:
    """A model spec, parsed before anything loads (ModelSpec.parse; loading checks the rest)."""
    try:
        ModelSpec.parse(spec)
    except ModelSpecError as e:
        raise ParameterError(str(e)) from None


def _some_model(p, names: list[str]) -> None:
    if not any(getattr(p, n) for n in names):
        what = (f"parameters {' and '.join(repr(n) for n in names)} are both empty" if len(names) > 1
                else f"parameter {names[0]!r} is empty")
        example = " or ".join(["models: [smollm2-135m]", "toy_runs: [llama-preln]"][:len(names)])
        raise ParameterError(f"{what}: name at least one model (e.g. {example})")


def _specs_check(p, names: list[str]) -> None:
    for name in names:
        for spec in getattr(p, name):
            try:
                check_spec(spec)
            except ParameterError as e:
                raise ParameterError(f"parameter {name!r}: {e}") from None
    _some_model(p, ["models", "toy_runs"] if hasattr(p, "toy_runs") else ["models"])


@register("02_extract_states")
@dataclass
class ExtractParams(PromptParams):
    """Extract and cache the token states of the toy models and the pretrained models."""
    models: list[str] = field(default_factory=lambda: ["smollm2-135m", "gemma3-270m", "minilm-l6"])
    toy_runs: list[str] = field(default_factory=lambda: list(TOY_RUNS))
    toy_random: bool = True             # also the random initialisation (checkpoint step 0)
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
    layer_measures: bool = True          # entropy, curvature, anisotropy, CKA, linearity (docs/METRICS.md)

    def check(self) -> None:
        super().check()
        _specs_check(self, ["models"])
        self.positive("heatmap_tokens", "range_max", "k_max", "n_boot")
        if not 0 <= self.heatmap_prompt < self.n_prompts:
            raise ParameterError(f"parameter 'heatmap_prompt' must be in [0, n_prompts), got {self.heatmap_prompt}")
        if any(not 0 <= x <= 1 for x in self.heatmap_layers):
            raise ParameterError("parameter 'heatmap_layers' holds relative depths in [0, 1]")


# ---- 04_shuffle_experiment and 05_model_comparison: classes go here (issue 6) ----

@register("04_shuffle_experiment")
@dataclass
class ShuffleParams(PromptParams):
    """The shuffle experiment of token_geometry: prompts of n_tokens tokens (or the longest power of 4
    that fits a model's context), their blocks permuted at every shuffle index, through each model."""
    models: list[str] = field(default_factory=lambda: ["smollm2-135m", "gemma3-270m", "toy:llama-preln"])
    n_tokens: int = 1024
    n_prompts: int = 3                   # per model, unless n_prompts_by_model names it
    n_prompts_by_model: dict[str, int] = field(default_factory=lambda: {"toy:llama-preln": 20})
    shuffle_indices: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4, 5])
    bos_models: list[str] = field(default_factory=lambda: ["gemma3-270m"])
    batch_size: int = 1
    range_max: int = 256
    k_max: int = 31
    n_boot: int = 1000
    show_prompts: int = 3                # single-prompt panels in the profile figures
    cache_states: bool = False           # True: keep the shuffled prompts' states in the activation cache
                                         # (~2 GB at the default sizes); the geometry tables are cached either way

    def check(self) -> None:
        super().check()
        _specs_check(self, ["models"])
        self.positive("range_max", "k_max", "n_boot")
        if not self.models:
            raise ParameterError("parameter 'models' must name at least one model")
        if not self.shuffle_indices or 0 not in self.shuffle_indices or min(self.shuffle_indices) < 0:
            raise ParameterError("parameter 'shuffle_indices' must hold 0 (the structured prompts) and "
                                 f"non-negative integers, got {self.shuffle_indices}")
        if len(set(self.shuffle_indices)) != len(self.shuffle_indices):
            raise ParameterError(f"parameter 'shuffle_indices' has repeats: {self.shuffle_indices}")
        for spec, n in self.n_prompts_by_model.items():
            if spec not in self.models:
                raise ParameterError(f"parameter 'n_prompts_by_model': {spec!r} is not one of 'models' "
                                     f"({', '.join(self.models)})")
            if n < 3:
                raise ParameterError(f"parameter 'n_prompts_by_model[{spec!r}]' must be at least 3 (intervals "
                                     f"and correlations over prompts), got {n}")
        if self.n_prompts < 3:
            raise ParameterError(f"parameter 'n_prompts' must be at least 3 (intervals and correlations over "
                                 f"prompts), got {self.n_prompts}")
        if self.show_prompts < 0:
            raise ParameterError(f"parameter 'show_prompts' must be >= 0, got {self.show_prompts}")


@register("05_model_comparison")
@dataclass
class ComparisonParams(PromptParams):
    """Every model on the structured prompts of notebooks 02 and 03 (same cache entries): profiles
    against relative depth, the ID-loss correlation, a summary table."""
    models: list[str] = field(default_factory=lambda: ["smollm2-135m", "gemma3-270m", "minilm-l6"])
    toy_runs: list[str] = field(default_factory=lambda: list(TOY_RUNS))
    toy_random: bool = True
    range_max: int = 256
    k_max: int = 31
    n_boot: int = 1000
    layer_measures: bool = True          # as notebook 03 (the same cached tables)

    def check(self) -> None:
        super().check()
        _specs_check(self, ["models"])
        self.positive("range_max", "k_max", "n_boot")
        if not self.models and not self.toy_runs:
            raise ParameterError("parameters 'models' and 'toy_runs' are both empty: nothing to compare")



# ---- 06_training_trajectory_phases: class goes here (issue 7) ----

# (the class lives in tg_utils/params/trajectory.py)


# ---- 07_attention_geometry: class goes here (issue 8) ----


@register("07_attention_geometry")
@dataclass
class AttentionGeometryParams(NotebookParams):
    """Attention geometry after "Traveling Words" (Molina 2023): embedding-norm tokens, per-head W_qk / W_vo
    SVD, the attention-ellipse probe, the attention-bias probes, the LayerNorm distance table and a phrase's
    UMAP trajectory (tg_utils.experiments.nb07_attention_geometry). The defaults are the paper's procedures
    (its code: santiag0m/traveling-words); each variant of this repository is a named option."""
    models: list[str] = field(default_factory=lambda: [
        "toy:standard-preln", "toy:llama-preln", "smollm2-135m", "gemma3-270m"])
    blocks: list[int] | None = None      # probed blocks, 0-based (the paper: 0, 5, 11 of GPT-2); None: depths
    depths: list[float] = field(default_factory=lambda: [0.0, 0.5, 1.0])   # probed blocks, relative depth
    top_k: int = 5                       # tokens in every top / bottom list (the paper: 5)
    n_components: int = 20               # singular directions probed per head (the paper: 20)
    coverage_level: float = 0.99         # cumulative coverage whose rank is reported (the paper: 99 %)
    coverage_of: str = "sigma"           # coverage of "sigma" (the paper's plot) | "sigma2" (Eckart-Young, variant)
    nouns_path: str = "data/traveling_words_nouns.txt"   # the paper's COMMON_NOUNS.txt
    n_nouns: int = 100                   # the first n nouns of the list (then the single-token filter)
    noun_prefix: str = ""                # "": the bare noun (the paper); " ": the in-context form (variant)
    ellipse_heads: int | None = None     # ellipse probe's per-head rows on the first n heads (None: all, the paper)
    ellipse_readout: str = "paper"       # "paper": ln_f(e + u_h + b_O), per head and summed; "update": u_h alone
    readout_matrix: str = "embedding"    # values / W_vo outputs read against "embedding" (paper) or "unembedding"
    sign_side: str = "key"               # W_qk sign set on the "key" side (paper) or the "query" side (variant)
    show_nouns: list[str] = field(default_factory=lambda: ["time", "world", "house", "water"])
    show_heads: int = 2                  # heads shown in the notebook's direction tables (all are saved)
    show_head: int = 0                   # the head whose top keys the ellipse figure shows
    phrase: str = "To kill two birds with one stone"     # the paper's (trajectory.py:202)
    umap_rows: str = "first"             # "first" n_fit rows of W_E (paper) | "random" seeded sample (variant)
    umap_metric: str = "euclidean"       # "euclidean" (paper) | "cosine" (variant)
    umap_init: str = "spectral"          # "spectral": sklearn SpectralEmbedding start (paper) | "umap" (variant)
    umap_n_fit: int = 10000              # embedding rows the UMAP is fitted on (the paper: the first 10 000)
    umap_neighbors: int = 15
    umap_epochs: int | None = None       # None: UMAP's default (500 up to 10 000 rows), as the paper
    device: str = "cpu"
    model_dtype: str = "float32"
    ALIASES = {"dtype": "model_dtype"}   # its name before notebooks 01-07 shared device / model_dtype

    CHOICES = {"ellipse_readout": ("paper", "update"), "readout_matrix": ("embedding", "unembedding"),
               "sign_side": ("key", "query"), "umap_rows": ("first", "random"),
               "umap_metric": ("euclidean", "cosine"), "umap_init": ("spectral", "umap"),
               "coverage_of": ("sigma", "sigma2")}

    def check(self) -> None:
        super().check()
        _specs_check(self, ["models"])
        if not self.models:
            raise ParameterError("parameter 'models' must name at least one model")
        self.positive("top_k", "n_components", "n_nouns", "ellipse_heads", "show_heads", "umap_neighbors",
                      "umap_epochs")
        for name, allowed in self.CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ParameterError(f"parameter {name!r} must be one of {list(allowed)}, got {getattr(self, name)!r}")
        if not self.depths or any(not 0.0 <= x <= 1.0 for x in self.depths):
            raise ParameterError(f"parameter 'depths' holds relative depths in [0, 1], got {self.depths}")
        if self.blocks is not None and (not self.blocks or any(int(b) < 0 for b in self.blocks)):
            raise ParameterError(f"parameter 'blocks' holds 0-based block indices (or null: use depths), "
                                 f"got {self.blocks}")
        if self.show_head < 0:
            raise ParameterError(f"parameter 'show_head' must be a head index >= 0, got {self.show_head}")
        if not 0.0 < self.coverage_level <= 1.0:
            raise ParameterError(f"parameter 'coverage_level' must be in (0, 1], got {self.coverage_level}")
        if not self.phrase.strip():
            raise ParameterError("parameter 'phrase' must not be empty")
        if self.umap_n_fit <= self.umap_neighbors + 1:
            raise ParameterError(f"parameter 'umap_n_fit' ({self.umap_n_fit}) must exceed 'umap_neighbors' + 1 "
                                 f"({self.umap_neighbors + 1})")
        _placement_check(self)
        if not resolve(self.nouns_path).is_file():
            raise ParameterError(f"parameter 'nouns_path': no file {self.nouns_path!r}")
