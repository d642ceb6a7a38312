"""Attention geometry read from the weights alone (after "Traveling Words", Molina 2023): norms and the
LayerNorm distance table, factored per-head matrices, vocabulary scans and embedding-norm scorings, the per-block
probe (singular directions, attention ellipse), the attention-bias probes and the UMAP trajectory."""
from .biases import BIAS_COLUMNS, BiasProbe, bias_probe, bias_vectors
from .factored import (COVERAGE_LEVEL, SVD, FactoredMatrix, checked_kv_map, coverage_curve, coverage_table,
                       factored_svd, flip_mask, kv_head_map, qk_factors, qk_matrices, rank_at_coverage,
                       singular_value_coverage, singular_values, vo_factors, vo_matrices)
from .norms import (LAYERNORM_SETTINGS, affine, as_norm, layer_norm, layernorm_distance_table, rms_norm,
                    standardised_rows)
from .probe import (DIRECTION_COLUMNS, ELLIPSE_COLUMNS, READOUTS, SIGN_SIDES, BlockProbe, block_probe, ellipse_keys,
                    ellipse_updates, ellipse_values, sign_align)
from .umap import UmapTrajectory, fit_rows, umap_trajectory
from .vocab import (CHUNK, PAPER_SETTINGS, SCAN_DTYPE, SCORINGS, EmbeddingNormScores, VocabExtremes,
                    embedding_norm_scores, fmt_token, single_token_nouns, token_strings, top_bottom_tokens,
                    vocab_extremes)

__all__ = [
    "BIAS_COLUMNS", "BiasProbe", "BlockProbe", "CHUNK", "COVERAGE_LEVEL", "DIRECTION_COLUMNS", "ELLIPSE_COLUMNS",
    "EmbeddingNormScores", "FactoredMatrix", "LAYERNORM_SETTINGS", "PAPER_SETTINGS", "READOUTS", "SCAN_DTYPE",
    "SCORINGS", "SIGN_SIDES", "SVD", "UmapTrajectory", "VocabExtremes", "affine", "as_norm", "bias_probe",
    "bias_vectors", "block_probe", "checked_kv_map", "coverage_curve", "coverage_table", "ellipse_keys",
    "ellipse_updates", "ellipse_values", "embedding_norm_scores", "factored_svd", "fit_rows", "flip_mask",
    "fmt_token", "kv_head_map", "layer_norm", "layernorm_distance_table", "qk_factors", "qk_matrices",
    "rank_at_coverage", "rms_norm", "sign_align", "single_token_nouns", "singular_value_coverage",
    "singular_values", "standardised_rows", "token_strings", "top_bottom_tokens", "umap_trajectory",
    "vo_factors", "vo_matrices",
]
