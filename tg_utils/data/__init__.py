"""Inputs of the analyses: corpora, word lists, contexts, prompts and sequence sets."""
