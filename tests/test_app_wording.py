"""The words and defaults a new user reads: one message per failure, counts with the right
plural, free KV blocks that are free, the repetition penalty every way of chatting shares, and
GPU-only settings shown only for a GPU."""
from pathlib import Path

import pytest

from app import sampling
from app.backends import BackendError, RemoteError, is_user_error, user_message
from app.backends.errors import OUT_OF_MEMORY
from app.cli.chat import format_stat_line, format_stats
from app.cli.documents import format_result
from app.cli.main import build_parser
from app.gui.settings import Settings
from app.gui.settings_dialog import SettingsDialog
from engine import ModelLoadError, RequestError, RequestMetrics
from rag import FileResult
from rag.loaders import DocumentError
from rag.store import LibraryError


@pytest.mark.parametrize("error, expected, theirs", [
    (RequestError("the prompt is 5000 tokens long but the context holds 4096", "prompt"),
     "the prompt is 5000 tokens long but the context holds 4096", True),
    (ModelLoadError("/models/x.gguf does not exist"), "Cannot load the model: /models/x.gguf does not exist", True),
    (BackendError("the device is set to CUDA, but no CUDA GPU is available"),
     "the device is set to CUDA, but no CUDA GPU is available", True),
    (RemoteError("the server refused the API key (401): bad key", 401), "the server refused the API key (401): bad key",
     True),
    (DocumentError("broken.pdf: not a PDF"), "broken.pdf: not a PDF", True),
    (LibraryError("the library is in use by another Folio"), "the library is in use by another Folio", True),
    (MemoryError(), OUT_OF_MEMORY, True),
    (KeyError("blocks"), "KeyError: 'blocks'", False),          # a bug says what it is
    (ValueError("no chat template"), "ValueError: no chat template", False),
])
def test_one_message_for_every_failure(error, expected, theirs):
    assert user_message(error) == expected
    assert is_user_error(error) is theirs


def test_a_gpu_out_of_memory_is_recognised_as_such():
    torch = pytest.importorskip("torch")
    assert user_message(torch.OutOfMemoryError("CUDA out of memory")) == OUT_OF_MEMORY


def test_counts_have_the_right_plural():
    one = RequestMetrics(num_prompt_tokens=1, num_cached_tokens=0, num_generated_tokens=1,
                         arrival_time=0.0, first_token_time=0.5, finish_time=1.0)
    assert "· 1 token ·" in format_stat_line(one) and "cached 0/1 prompt token]" in format_stat_line(one)
    assert format_result(FileResult(Path("a.txt"), "added", "d1", num_chunks=1)).endswith("(1 chunk)")
    assert format_result(FileResult(Path("b.txt"), "added", "d2", num_chunks=2)).endswith("(2 chunks)")


def test_stats_count_cached_blocks_apart_from_free_ones():
    shown = format_stats({"blocks_total": 10, "blocks_used": 3, "blocks_shared": 1, "blocks_cached": 4,
                          "blocks_free": 7, "block_size": 16})
    lines = dict(line.split() for line in shown.splitlines())
    assert lines["blocks_free"] == "3" and lines["blocks_cached"] == "4"  # 10 = 3 used + 4 cached + 3 free


def test_the_app_chat_and_ask_share_one_repetition_penalty():
    parser = build_parser()
    assert sampling.REPETITION_PENALTY == 1.1
    assert parser.parse_args(["chat"]).repetition_penalty == sampling.REPETITION_PENALTY
    assert parser.parse_args(["ask", "why?"]).repetition_penalty == sampling.REPETITION_PENALTY
    assert parser.parse_args(["chat", "--repetition-penalty", "1.0"]).repetition_penalty == 1.0
    assert Settings().sampling_params().repetition_penalty == sampling.REPETITION_PENALTY


def test_the_settings_offer_the_repetition_penalty_and_show_gpu_memory_only_for_a_gpu(qtbot):
    dialog = SettingsDialog(Settings(device="cpu"))
    qtbot.addWidget(dialog)
    dialog.show()
    assert dialog.repetition_penalty.isVisible() and dialog.repetition_penalty.value() == pytest.approx(1.1)
    dialog.repetition_penalty.setValue(1.3)
    assert dialog.result_settings().repetition_penalty == 1.3
    assert dialog.result_settings().sampling_params().repetition_penalty == 1.3
    assert not dialog.kv_fraction.isVisible()  # "KV memory fraction" means nothing on the CPU
    dialog.device.setCurrentText("auto")
    assert not dialog.kv_fraction.isVisible()  # no GPU here
    dialog.device.setCurrentText("cuda")
    assert dialog.kv_fraction.isVisible()

    on_a_gpu = SettingsDialog(Settings(device="auto"), gpu_present=True)
    qtbot.addWidget(on_a_gpu)
    on_a_gpu.show()
    assert on_a_gpu.kv_fraction.isVisible()
