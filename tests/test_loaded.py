"""clozelm.Model: the network, its tokenizer and what clozelm knows about it."""

import warnings

import pytest
import torch

from clozelm.errors import ClozelmError
from clozelm.loaded import Model, ModelInfo, checked_forwards, model_label
from clozelm.model import ModelConfig, Transformer


def network(**switches) -> Transformer:
    return Transformer(ModelConfig(vocab_size=40, n_positions=16, n_embd=16, n_layer=2, n_head=4, **switches)).eval()


def test_label_names_the_model_as_given_or_by_its_folder_or_its_shape(tmp_path):
    net = network()
    assert Model(net).label == "gpt2 2x4"
    assert Model(net, info=ModelInfo(source=tmp_path / "mine")).label == "mine"
    assert Model(net, info=ModelInfo(source=tmp_path / "org" / "model")).label == "org/model"
    assert Model(net, info=ModelInfo(name="someone/tiny-gpt2")).label == "someone/tiny-gpt2"
    (tmp_path / "runs" / "model").mkdir(parents=True)
    assert model_label(str(tmp_path / "runs" / "model")) == "runs/model"


def test_fill_method_follows_what_the_model_was_trained_for():
    assert Model(network()).fill_method == "causal"
    assert Model(network(causal=False, pre_ln=False, head="mlm")).fill_method == "masked"
    # fim needs the sentinels in the tokenizer too: without a tokenizer a fim-trained model fills left to right
    assert Model(network(), info=ModelInfo(objective="fim")).fill_method == "causal"
    with pytest.raises(ClozelmError, match="objective"):
        ModelInfo(objective="gan")


def test_calls_go_to_the_network_and_the_forward_check_can_stop_them():
    net = network()
    model = Model(net)
    ids = torch.tensor([[1, 2, 3]])
    assert torch.equal(model(ids).logits, net(ids).logits)
    calls = []
    with checked_forwards(lambda: calls.append(1)):
        model(ids)
        model(ids)
    assert calls == [1, 1]

    def stop():
        raise TimeoutError("deadline")
    with checked_forwards(stop), pytest.raises(TimeoutError):
        model(ids)
    model(ids)  # the check ended with its block


def test_old_attribute_paths_reach_the_network_with_a_warning():
    model = Model(network())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert model.wte is model.network.wte
    assert any(issubclass(w.category, DeprecationWarning) for w in caught)
    with pytest.raises(TypeError):
        Model("not a network")


def test_a_missing_attribute_is_said_of_the_model_with_the_likely_name():
    """m.save(...) once said "'Transformer' object has no attribute 'save'", of an object the user never held."""
    model = Model(network())
    with pytest.raises(AttributeError, match=r"^'Model' object has no attribute 'save'; did you mean save_pretrained\?$"):
        model.save("out/")
    with pytest.raises(AttributeError, match=r"^'Model' object has no attribute 'no_such_thing'$"):
        model.no_such_thing
    assert not hasattr(model, "fill_methodd")  # hasattr still answers False
