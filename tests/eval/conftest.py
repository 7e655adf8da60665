import pytest

from handbuilt import word_tokenizer

# Left context alone says "dog" (seen 10 times after "the"), but only "cat" is ever followed by "sat".
SENTENCES = ["the dog ran home"] * 10 + ["the cat sat down"] * 3 + ["a bird flew away"] * 2


@pytest.fixture(autouse=True)
def _tiny_models_on_one_thread(one_thread):
    """Tiny models: one thread is faster."""


@pytest.fixture(scope="package")
def tok(tmp_path_factory):
    return word_tokenizer(tmp_path_factory.mktemp("eval-tok"), SENTENCES)
