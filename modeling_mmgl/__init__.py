"""mmgl model: `MMGLConfig` and `MMGLForConditionalGeneration` (OPT + multimodal graph neighbours)."""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .configuration_mmgl import MMGLConfig
from .cross_attention import MMGLDecoderLayer, MMGLGatedCrossAttentionBlock, MMGLNeighborKeyValues
from .modeling_mmgl import MMGLCausalLMOutputWithPast, MMGLForConditionalGeneration, MMGLPreTrainedModel

# With the package installed, the Auto classes know "mmgl" without trust_remote_code.
AutoConfig.register("mmgl", MMGLConfig, exist_ok=True)
AutoModel.register(MMGLConfig, MMGLForConditionalGeneration, exist_ok=True)
AutoModelForCausalLM.register(MMGLConfig, MMGLForConditionalGeneration, exist_ok=True)

__all__ = [
    "MMGLCausalLMOutputWithPast",
    "MMGLConfig",
    "MMGLDecoderLayer",
    "MMGLForConditionalGeneration",
    "MMGLGatedCrossAttentionBlock",
    "MMGLNeighborKeyValues",
    "MMGLPreTrainedModel",
]
