"""The toy transformers: model (architecture and presets), tokenizer (byte-level BPE), checkpoints
(the files of a run), train (the training loop, perplexity) and runs (notebook 01's run set). Import
the submodules; nothing is re-exported here."""
