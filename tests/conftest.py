import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import copy  # noqa: E402

import pytest  # noqa: E402

from tests import tiny_models  # noqa: E402


@pytest.fixture(params=tiny_models.KINDS)
def tiny(request):
    """(ModelHandle, independent eager copy of the same HF model) for each tiny architecture."""
    import workbench as wb

    model = tiny_models.hf_model(request.param)
    oracle = copy.deepcopy(model)
    handle = wb.load_model(f"tiny-{request.param}", hf_model=model, tokenizer=tiny_models.tokenizer(request.param))
    return handle, oracle


@pytest.fixture(scope="session")
def minilm():
    import workbench as wb

    return wb.load_model("minilm")
