"""Model walks the ditched step does every step: same result as the plain torch calls they replace."""

from __future__ import annotations

import torch

from conftest import padded_batch, tiny_model
from tokenseek.models import apply_peft
from tokenseek.models.introspect import attention_configs, eval_mode


def lora_model():
    return apply_peft(tiny_model("llama"), "lora", r=4, alpha=8, dropout=0.5)


def test_eval_mode_switches_every_module_as_model_eval_does_and_restores_each_flag():
    model = lora_model()
    model.train()
    deliberately_eval = model.get_base_model().model.layers[1].mlp
    deliberately_eval.eval()
    before = {name: m.training for name, m in model.named_modules()}
    input_ids, attention_mask, _ = padded_batch()
    with eval_mode(model):
        assert not any(m.training for m in model.modules())
        with torch.no_grad():  # dropout 0.5 on every LoRA input: two forwards agree only without it
            first, second = (model(input_ids=input_ids, attention_mask=attention_mask).logits for _ in range(2))
        assert torch.equal(first, second)
    assert {name: m.training for name, m in model.named_modules()} == before
    assert sum(before.values()) > 1 and not all(before.values())  # the mixed flags came back as they were


def test_eval_mode_calls_a_train_override_that_does_more_than_set_flags():
    calls = []

    class Remembers(torch.nn.Linear):
        def train(self, mode: bool = True):
            calls.append(mode)
            return super().train(mode)

    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Sequential(Remembers(3, 3), torch.nn.Dropout(0.5)))
    model.train()
    calls.clear()
    with eval_mode(model):
        assert not any(m.training for m in model.modules())
    assert calls == [False, True] and all(m.training for m in model.modules())


def test_attention_configs_finds_every_config_a_module_holds():
    model = lora_model()

    def reference(model):  # every module's `config` attribute, looked up the ordinary way
        found = {}
        for module in model.modules():
            config = getattr(module, "config", None)
            if config is not None and hasattr(config, "_attn_implementation"):
                found[id(config)] = config
        return list(found.values())

    # A second config object (as a multimodal model's vision part has) must be found too.
    extra = type(model.get_base_model().config)(**model.get_base_model().config.to_dict())
    model.get_base_model().model.layers[0].self_attn.config = extra
    found = attention_configs(model)
    assert len(found) == 2 and {id(c) for c in found} == {id(c) for c in reference(model)}


def test_eval_mode_lets_a_model_using_hub_kernels_switch_them():
    """transformers re-selects hub kernels in train() when a model uses them: eval_mode must go
    through train() then, not write the flags past it."""
    model = tiny_model("llama").train()
    switched = []
    model._use_kernels = True
    model.set_use_kernels = lambda value, *args, **kwargs: switched.append(model.training)
    with eval_mode(model):
        assert not model.training and not any(m.training for m in model.modules())
    assert switched == [False, True] and model.training
