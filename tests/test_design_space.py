"""One design module (`processing/design_space.py`): its choices are the ones the model configuration validates,
and its defaults are the script's flags, the processor's options and the study's unset design keys."""
import dataclasses
import inspect
import sys
from pathlib import Path

from modeling_mmgl import configuration_mmgl
from processing import design_space
from processing.design_space import DESIGN_DEFAULTS
from processing.processing_mmgl import MMGLProcessor
from processing.training import tuning

import run_summarization


def test_model_config_validates_the_design_module_choices():
    # The Hub folder's config cannot import `processing`: it keeps its own tuples, which must be these.
    assert configuration_mmgl.POSITION_ENCODINGS == design_space.POSITION_ENCODINGS
    assert configuration_mmgl.GNN_TYPES == design_space.GNN_TYPES
    assert configuration_mmgl.ALPHA_INITIALIZERS == design_space.ALPHA_INITIALIZERS
    assert configuration_mmgl.GRAPH_TARGET_FEATURES == design_space.GRAPH_TARGET_FEATURES
    assert configuration_mmgl.NEIGHBOR_BRIDGES == design_space.NEIGHBOR_BRIDGES
    config = configuration_mmgl.MMGLConfig()  # the bridge's model-side defaults are the design module's
    for key in ("neighbor_bridge", "bridge_num_latents", "bridge_num_layers"):
        assert getattr(config, key) == DESIGN_DEFAULTS[key], key
    assert set(design_space.NEIGHBOR_MODE_OF_ENCODING.values()) | {"none"} == set(configuration_mmgl.NEIGHBOR_MODES)
    assert tuning.TUNINGS is design_space.TUNINGS and tuning.PEFT_TUNINGS is design_space.PEFT_TUNINGS


def test_script_processor_and_study_take_the_design_defaults():
    fields = {f.name: f.default for f in dataclasses.fields(run_summarization.MMGLArguments)}
    assert {key: fields[key] for key in DESIGN_DEFAULTS} == DESIGN_DEFAULTS
    parameters = inspect.signature(MMGLProcessor.__init__).parameters
    for key in ("context", "neighbor_encoding", "text_neighbor_num_tokens", "image_neighbor_num_tokens",
                "max_text_neighbors", "max_image_neighbors", "neighbor_bridge", "bridge_num_latents",
                "graph_target_feature"):
        assert parameters[key].default == DESIGN_DEFAULTS[key], key
    config = configuration_mmgl.MMGLConfig()  # the model's defaults of the axes it owns
    for key in ("alpha_initializer", "alphas_initializer_range", "graph_target_feature", "lpe_k", "gnn_type",
                "gnn_num_layers", "cross_attention_gating", "cross_attention_interval"):
        assert getattr(config, key) == DESIGN_DEFAULTS[key], key
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "studies"))
    try:
        import run_study
    finally:
        sys.path.pop(0)
    assert run_study.DESIGN_DEFAULTS == {key: str(DESIGN_DEFAULTS[key]).lower() if key == "cross_attention_gating"
                                         else DESIGN_DEFAULTS[key] for key in run_study.DESIGN_KEYS}
