"""The mixin framework: declaration checks, conflict rules, wrapping, and the hook table."""

from __future__ import annotations

import pytest
import torch

from cogvlm.mixins.gated_mlp import GatedMLP
from cogvlm.mixins.lm_head import LMHead
from cogvlm.mixins.rotary import Rotary
from cogvlm.models.base_model import MixinModel
from cogvlm.models.context import ForwardContext
from cogvlm.models.mixin import Mixin, MixinError
from cogvlm.models.presets import llama_config
from cogvlm.models.transformer import Transformer

CONFIG = llama_config(layers=2, hidden=32, heads=4, inner=64, vocab=50, max_length=64)


def _llama() -> MixinModel:
    torch.manual_seed(0)
    model = MixinModel(Transformer(CONFIG))
    model.add_mixin("rotary", Rotary(CONFIG))
    model.add_mixin("mlp", GatedMLP(CONFIG))
    model.add_mixin("lm", LMHead(CONFIG))
    return model.eval()


def _run(model: MixinModel) -> torch.Tensor:
    input_ids = torch.arange(10).unsqueeze(0)
    with torch.no_grad():
        return model(input_ids, ForwardContext(position_ids=torch.arange(10).unsqueeze(0))).logits


class DoubleMLP(Mixin):
    hook_modes = {"mlp": "wrap"}

    def mlp(self, layer, layer_index, hidden_states, ctx, inner):
        return 2 * inner(layer, layer_index, hidden_states, ctx)


def test_a_plain_llama_builds_from_mixins_and_produces_vocabulary_logits():
    logits = _run(_llama())
    assert logits.shape == (1, 10, CONFIG.vocab_size)
    assert torch.isfinite(logits).all()


def test_a_wrapping_mixin_receives_the_previous_implementation_as_inner():
    model = _llama()
    hidden = torch.randn(1, 3, CONFIG.hidden_size)
    layer = model.transformer.layers[0]
    ctx = ForwardContext()
    before = model.hooks.mlp(layer, 0, hidden, ctx)
    model.add_mixin("doubler", DoubleMLP())
    torch.testing.assert_close(model.hooks.mlp(layer, 0, hidden, ctx), 2 * before)
    assert "doubler (DoubleMLP, wraps mlp (GatedMLP, replaces default))" in model.describe_hooks()


def test_removing_a_mixin_restores_the_previous_hooks():
    model = _llama()
    reference = _run(model)
    model.add_mixin("doubler", DoubleMLP())
    assert not torch.allclose(_run(model), reference)
    model.remove_mixin("doubler")
    torch.testing.assert_close(_run(model), reference)


def test_two_mixins_replacing_one_point_is_an_error_naming_both():
    model = _llama()
    with pytest.raises(MixinError, match="'mlp'.*'mlp'.*'mlp2'"):
        model.add_mixin("mlp2", GatedMLP(CONFIG))
    assert "mlp2" not in model.mixins


def test_a_duplicate_mixin_name_is_an_error():
    model = _llama()
    with pytest.raises(MixinError, match="mixin named 'lm' already exists"):
        model.add_mixin("lm", LMHead(CONFIG))


def test_an_undeclared_hook_method_is_an_error():
    class Sneaky(Mixin):
        def mlp(self, layer, layer_index, hidden_states, ctx):
            return hidden_states

    with pytest.raises(MixinError, match="defines 'mlp' without declaring it"):
        _llama().add_mixin("sneaky", Sneaky())


def test_a_misspelt_hook_method_is_an_error():
    class Typo(Mixin):
        hook_modes = {}

        def final_logit(self, transformer, hidden_states, ctx):
            return hidden_states

    with pytest.raises(MixinError, match="'final_logit'.*misspelt hook 'final_logits'"):
        _llama().add_mixin("typo", Typo())


def test_a_wrong_signature_is_an_error():
    class Wrong(Mixin):
        hook_modes = {"mlp": "replace"}

        def mlp(self, layer, hidden_states, ctx):
            return hidden_states

    with pytest.raises(MixinError, match=r"has parameters \('layer', 'hidden_states', 'ctx'\), expected"):
        MixinModel(Transformer(CONFIG)).add_mixin("wrong", Wrong())


def test_an_unknown_hook_point_is_an_error():
    class Unknown(Mixin):
        hook_modes = {"layer_forward": "replace"}

    with pytest.raises(MixinError, match="unknown hook point 'layer_forward'"):
        MixinModel(Transformer(CONFIG)).add_mixin("unknown", Unknown())


def test_a_wrap_without_inner_is_an_error():
    class NoInner(Mixin):
        hook_modes = {"mlp": "wrap"}

        def mlp(self, layer, layer_index, hidden_states, ctx):
            return hidden_states

    with pytest.raises(MixinError, match="expected .*'inner'"):
        _llama().add_mixin("no_inner", NoInner())


def test_mixin_parameters_appear_under_their_name():
    keys = set(_llama().state_dict())
    assert "mixins.mlp.gate_proj.1.weight" in keys
    assert "mixins.lm.lm_head.weight" in keys
    assert "mixins.rotary.rotary_emb.inv_freq" in keys
    assert "transformer.layers.0.attention.query_key_value.weight" in keys


def test_a_reserved_mixin_name_is_an_error():
    with pytest.raises(MixinError, match="'double' cannot name a mixin"):
        _llama().add_mixin("double", DoubleMLP())
