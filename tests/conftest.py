import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Triton kernels run in the interpreter on machines without a GPU. It must be set before
# anything imports triton (transformers does), so it lives here, first.
if not os.path.exists("/dev/nvidia0") and not os.environ.get("CUDA_VISIBLE_DEVICES"):
    os.environ.setdefault("TRITON_INTERPRET", "1")

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


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M-Instruct, loaded once per session through the user cache (the first
    load of a fresh cache dequantizes the GGUF: about 20 s on an idle machine)."""
    import workbench as wb

    return wb.load_model("smollm2")
