"""Attention geometry read from the weights alone (after "Traveling Words"): norms, factored per-head matrices, vocabulary scans, the per-block probe and the UMAP trajectory."""
from .factored import (COVERAGE_LEVEL, SVD, FactoredMatrix, checked_kv_map, coverage_curve, coverage_table,
                       factored_svd, flip_mask, kv_head_map, qk_factors, qk_matrices, rank_at_coverage,
                       singular_value_coverage, singular_values, vo_factors, vo_matrices)
from .norms import affine, as_norm, layer_norm, rms_norm, standardised_rows
from .probe import DIRECTION_COLUMNS, ELLIPSE_COLUMNS, BlockProbe, block_probe, ellipse_vectors, sign_align
from .umap import UmapTrajectory, umap_trajectory
from .vocab import (CHUNK, SCAN_DTYPE, EmbeddingNormScores, VocabExtremes, embedding_norm_scores, fmt_token,
                    single_token_nouns, token_strings, top_bottom_tokens, vocab_extremes)

__all__ = [
    "BlockProbe", "CHUNK", "COVERAGE_LEVEL", "DIRECTION_COLUMNS", "ELLIPSE_COLUMNS", "EmbeddingNormScores",
    "FactoredMatrix", "SCAN_DTYPE", "SVD", "UmapTrajectory", "VocabExtremes", "affine", "as_norm", "block_probe",
    "checked_kv_map", "coverage_curve", "coverage_table", "ellipse_vectors", "embedding_norm_scores",
    "factored_svd", "flip_mask", "fmt_token", "kv_head_map", "layer_norm", "qk_factors", "qk_matrices",
    "rank_at_coverage", "rms_norm", "sign_align", "single_token_nouns", "singular_value_coverage",
    "singular_values", "standardised_rows", "token_strings", "top_bottom_tokens", "umap_trajectory",
    "vo_factors", "vo_matrices",
]
