import pytest

import clozelm

from .helpers import build_models, running


@pytest.fixture(scope="package")
def model_dirs(tmp_path_factory):
    return build_models(tmp_path_factory.mktemp("served"))


@pytest.fixture(scope="package")
def models(model_dirs):
    return {"causal": clozelm.load(model_dirs[0]), "bidi": clozelm.load(model_dirs[1])}


@pytest.fixture(scope="module")
def server(models):
    with running(models) as s:
        yield s
