"""Shared fixtures: the tiny local language model of the TRL tests (built once per session)."""

import pytest


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory):
    """Folder of a randomly initialised 2-layer Qwen2 and its WordLevel tokenizer (no downloads)."""
    pytest.importorskip("trl")
    import trl_tiny

    folder = tmp_path_factory.mktemp("tiny-lm")
    texts = [row["prompt"] for row in trl_tiny.task(64)]
    return str(trl_tiny.build(str(folder), texts))


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch on one thread for a module's tests, restored after."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer(tiny_lm):
    """The tokenizer of :func:`tiny_lm`."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_lm)
