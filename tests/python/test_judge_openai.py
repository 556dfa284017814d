"""OpenAIJudge, and `sgpo-rs judge` / `judge-eval` with `--backend openai`, against a real HTTP
server process on 127.0.0.1 (tests/python/chat_server.py: the chat-completions protocol, plain and
streamed, backed by a tiny random transformers model, with scripted replies and faults). The
`openai` client is used as it is: nothing is mocked."""

import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

pytest.importorskip("openai")
pytest.importorskip("transformers")

from sgpo_rs import cli  # noqa: E402
from sgpo_rs.judge import CachedJudge, OpenAIJudge, RuleJudge, make_synthetic, processbench_score  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
PROBLEM = "Start from 3 and apply these operations in order, one per paragraph: + 4, * 2, - 5."
WRONG_AT_1 = "3 + 4 = 7\n\n7 * 2 = 15\n\n15 - 5 = 10"
RIGHT = "3 + 4 = 7\n\n7 * 2 = 14\n\n14 - 5 = 9"
KEY = "sk-test-7f3a9c1e5b2d4f60a8e1c3b5d7f9a2c4"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The chat server as a separate process; yields its ``/v1`` base URL."""
    import tiny_models

    folder = tiny_models.build_causal_lm(str(tmp_path_factory.mktemp("chat_model")))
    log = open(tmp_path_factory.mktemp("chat_log") / "server.err", "w+")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.Popen(
        [sys.executable, os.path.join(HERE, "chat_server.py"), "--model-dir", folder, "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        env=env,
    )
    line: list = []
    reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(60)
    if not line or not line[0].startswith("PORT "):
        proc.kill()
        log.seek(0)
        pytest.fail(f"the chat server did not start: {line!r} {log.read()[-2000:]}")
    base = f"http://127.0.0.1:{int(line[0].split()[1])}"
    try:
        yield base + "/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def stats(base_url):
    with urllib.request.urlopen(base_url.rsplit("/v1", 1)[0] + "/stats", timeout=10) as r:
        return json.loads(r.read())


def reset(base_url):
    req = urllib.request.Request(base_url.rsplit("/v1", 1)[0] + "/reset", data=b"{}", method="POST")
    urllib.request.urlopen(req, timeout=10).close()


def fast(base_url, model, **options):
    """A judge with short backoffs, so retry tests take milliseconds."""
    options = {"max_retries": 2, "backoff_s": 0.02, "max_backoff_s": 0.2, "timeout_s": 10.0, **options}
    return OpenAIJudge(model, base_url=base_url, **options)


@pytest.fixture
def records():
    return make_synthetic(24, seed=3)


# --------------------------------------------------------------------------------------------------
# Exact verdicts from scripted replies


@pytest.mark.parametrize("stream", [False, True])
def test_scripted_reply_gives_exact_verdicts(server, stream):
    judge = fast(server, "reply=Paragraph 0 is right; paragraph 1 is not. \\boxed{1}", stream=stream)
    verdicts = judge.judge([PROBLEM, PROBLEM, PROBLEM], [WRONG_AT_1, "only one step", ""])
    assert [v.first_error for v in verdicts] == [1, -2, -2]
    assert verdicts[0].raw.endswith("\\boxed{1}") and verdicts[0].error is None
    assert verdicts[0].num_steps == 3 and verdicts[0].credit == pytest.approx(1 / 3)
    assert "\\boxed" in verdicts[1].error and verdicts[1].raw.endswith("\\boxed{1}")  # 1 >= 1 step
    assert verdicts[2].error == "empty response: no steps"


@pytest.mark.parametrize("stream", [False, True])
def test_oracle_replies_match_the_labels(server, records, stream):
    judge = fast(server, "oracle", stream=stream, max_concurrency=4)
    verdicts = judge.judge([r["problem"] for r in records], [r["response"] for r in records])
    assert [v.first_error for v in verdicts] == [r["label"] for r in records]
    assert all(v.error is None and v.latency_s > 0 for v in verdicts)


def test_identity_names_model_host_and_settings(server):
    judge = fast(server, "oracle", temperature=0.25, max_tokens=321)
    host = server.split("//")[1].split("/")[0]
    assert judge.identity == f"openai:oracle@{host}|t=0.25|max_tokens=321|sgpo-critic-v1"
    system = fast(server, "oracle", system_prompt="Be strict.")
    assert system.identity != fast(server, "oracle").identity  # the cache must tell them apart


def test_request_carries_the_settings(server):
    judge = fast(
        server,
        "oracle",
        system_prompt="Be strict.",
        temperature=0.3,
        max_tokens=77,
        extra_body={"top_k": 1},
        stream=True,
    )
    assert judge.judge([PROBLEM], [WRONG_AT_1])[0].first_error == 1
    request = stats(server)["last_request"]
    assert [m["role"] for m in request["messages"]] == ["system", "user"]
    assert request["messages"][0]["content"] == "Be strict."
    assert "<paragraph_1>\n7 * 2 = 15\n</paragraph_1>" in request["messages"][1]["content"]
    assert request["model"] == "oracle" and request["stream"] is True
    assert request["temperature"] == 0.3 and request["max_tokens"] == 77 and request["top_k"] == 1


def test_cached_openai_judge_never_asks_twice(server, records, tmp_path):
    reset(server)
    judge = CachedJudge(fast(server, "oracle"), str(tmp_path / "v.sqlite"))
    problems, responses = [r["problem"] for r in records], [r["response"] for r in records]
    first = judge.judge(problems, responses)
    assert stats(server)["requests"] == len(records)
    again = judge.judge(problems, responses)
    assert stats(server)["requests"] == len(records) and judge.hits == len(records)
    assert [v.first_error for v in again] == [v.first_error for v in first]


# --------------------------------------------------------------------------------------------------
# Faults: retried, or a missing verdict - never an exception


@pytest.mark.parametrize("fault", ["fail500=2", "fail429=2"])
def test_retries_recover(server, fault):
    reset(server)
    judge = fast(server, f"{fault}+oracle", max_retries=2)
    verdicts = judge.judge([PROBLEM, PROBLEM], [WRONG_AT_1, RIGHT])
    assert [v.first_error for v in verdicts] == [1, -1]
    assert stats(server)["requests"] == 6  # two failures, then the reply, per prompt


def test_retries_exhausted_is_a_missing_verdict(server):
    judge = fast(server, "fail500=5+oracle", max_retries=1)
    verdicts = judge.judge([PROBLEM], [WRONG_AT_1])
    assert verdicts[0].first_error == -2 and verdicts[0].num_steps == 3
    assert "HTTP 500" in verdicts[0].error and "after 2 attempts" in verdicts[0].error


def test_slow_server_times_out_in_bounded_time(server):
    judge = fast(server, "slow=20+oracle", timeout_s=0.5, max_retries=1)
    start = time.perf_counter()
    verdicts = judge.judge([PROBLEM, PROBLEM, PROBLEM], [WRONG_AT_1, RIGHT, WRONG_AT_1])
    elapsed = time.perf_counter() - start
    assert [v.first_error for v in verdicts] == [-2, -2, -2]
    assert all("timeout" in v.error for v in verdicts)
    assert elapsed < 8.0  # two 0.5 s attempts each, in parallel; the server would take 20 s


@pytest.mark.parametrize(
    "model, stream",
    [("malformed", False), ("malformed", True), ("truncated+oracle", True), ("truncated+oracle", False)],
)
def test_malformed_and_truncated_replies_are_missing(server, model, stream):
    judge = fast(server, model, stream=stream, max_retries=1)
    verdicts = judge.judge([PROBLEM, PROBLEM], [WRONG_AT_1, RIGHT])
    assert [v.first_error for v in verdicts] == [-2, -2]
    assert all(v.error and v.raw == "" for v in verdicts)


def test_unreachable_server_is_a_missing_verdict():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    judge = fast(f"http://127.0.0.1:{port}/v1", "oracle", max_retries=1)
    verdicts = judge.judge([PROBLEM], [RIGHT])
    assert verdicts[0].first_error == -2 and "Connection" in verdicts[0].error


def test_concurrency_is_bounded(server):
    reset(server)
    judge = fast(server, "slow=0.3+oracle", max_concurrency=3)
    verdicts = judge.judge([PROBLEM] * 9, [WRONG_AT_1, RIGHT, WRONG_AT_1] * 3)
    assert [v.first_error for v in verdicts] == [1, -1, 1] * 3
    seen = stats(server)
    assert seen["requests"] == 9 and 2 <= seen["max_in_flight"] <= 3


# --------------------------------------------------------------------------------------------------
# The API key


def test_api_key_never_leaks(server, monkeypatch, caplog):
    monkeypatch.setenv("SGPO_TEST_KEY", KEY)
    caplog.set_level(logging.DEBUG)  # the openai client's and httpx's debug logs included
    found = []
    for model, retries in [("oracle", 0), ("fail500=9+oracle", 1), ("unauthorized", 0), ("malformed", 0)]:
        judge = fast(server, model, api_key_env="SGPO_TEST_KEY", max_retries=retries)
        verdicts = judge.judge([PROBLEM], [WRONG_AT_1])
        found += [judge.identity, repr(judge), *(f"{v.raw} {v.error}" for v in verdicts)]
        if model == "oracle":
            assert verdicts[0].first_error == 1
        else:
            assert verdicts[0].first_error == -2 and verdicts[0].error
    assert stats(server)["authorization"] == f"Bearer {KEY}"  # the key did reach the server
    assert any("HTTP 401" in text for text in found) and any("HTTP 500" in text for text in found)
    assert any("Bearer" in text for text in found)  # the 500 body echoes the header, scrubbed
    assert caplog.records
    for text in [*found, caplog.text]:
        assert KEY not in text and KEY[8:] not in text


def test_missing_key(server, monkeypatch):
    monkeypatch.delenv("SGPO_TEST_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(ValueError, match="SGPO_TEST_KEY"):
        OpenAIJudge("m", api_key_env="SGPO_TEST_KEY")
    judge = fast(server, "oracle", api_key_env="SGPO_TEST_KEY")  # a local server: a placeholder
    assert judge.judge([PROBLEM], [RIGHT])[0].first_error == -1
    assert stats(server)["authorization"] == "Bearer EMPTY"


# --------------------------------------------------------------------------------------------------
# The tiny model: noise in, no verdict or a valid index out


@pytest.mark.parametrize("stream", [False, True])
def test_tiny_model_noise_is_missing_or_valid(server, records, stream):
    judge = fast(server, "tiny", stream=stream, timeout_s=120.0, max_tokens=16, accept_truncated=True)
    verdicts = judge.judge([r["problem"] for r in records[:6]], [r["response"] for r in records[:6]])
    for v, r in zip(verdicts, records):
        assert v.num_steps == len(r["steps"])
        assert v.first_error == -2 or -1 <= v.first_error < v.num_steps
        if v.first_error == -2:
            assert v.error == "no valid \\boxed{index} in the reply" and v.raw  # a reply came back
    strict = fast(server, "tiny", stream=stream, timeout_s=120.0, max_tokens=16)
    # The tiny model never ends within 16 tokens: cut replies are missing verdicts.
    for v in strict.judge([records[0]["problem"]], [records[0]["response"]]):
        assert v.first_error == -2 and "max_tokens" in v.error


# --------------------------------------------------------------------------------------------------
# The command line against the server


@pytest.fixture
def synthetic(tmp_path):
    path = tmp_path / "set.jsonl"
    assert cli.main(["judge-eval", "--make-synthetic", "40", "--output", str(path), "--seed", "11"]) == 0
    return path


def read(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def backend(server, model, *extra):
    return ["--backend", "openai", "--base-url", server, "--model", model, "--max-concurrency", "4", *extra]


def test_judge_eval_with_the_oracle_server_scores_f1_one(server, synthetic, capsys):
    assert cli.main(["judge-eval", "--input", str(synthetic), *backend(server, "oracle")]) == 0
    out = capsys.readouterr().out
    assert "openai:oracle@127.0.0.1" in out
    assert "100.0" in out.split("F1:")[1].splitlines()[0]
    assert "missing verdicts:              0" in out


def test_judge_eval_with_a_fixed_reply_scores_as_predicted(server, synthetic, capsys):
    assert (
        cli.main(["judge-eval", "--input", str(synthetic), *backend(server, "reply=\\boxed{1}", "--stream")])
        == 0
    )
    out = capsys.readouterr().out
    records = read(synthetic)
    # Every response is judged "first error at step 1" (all have >= 2 steps).
    predicted = [1 if len(r["steps"]) > 1 else -2 for r in records]
    score = processbench_score([r["label"] for r in records], predicted)
    assert f"accuracy on erroneous samples: {100 * score.error_accuracy:.1f}" in out
    assert "accuracy on correct samples:   0.0" in out and "F1:                            0.0" in out
    assert f"missing verdicts:              {score.num_missing}" in out


def test_judge_command_with_the_server(server, synthetic, tmp_path, capsys):
    out_path, cache = tmp_path / "out.jsonl", str(tmp_path / "c.sqlite")
    args = ["judge", "--input", str(synthetic), "--quiet", "--cache", cache, *backend(server, "oracle")]
    assert cli.main([*args, "--output", str(out_path)]) == 0
    assert "cache: 0 hits" in capsys.readouterr().out
    records, out = read(synthetic), read(out_path)
    expected = RuleJudge().judge([r["problem"] for r in records], [r["response"] for r in records])
    for r, o, e in zip(records, out, expected):
        assert o["first_error"] == (-2 if r["correct"] else e.first_error)
        assert o["judged"] is (not r["correct"])
    again = tmp_path / "again.jsonl"
    assert cli.main([*args, "--output", str(again)]) == 0
    assert "0 misses" in capsys.readouterr().out and read(again) == out


def test_judge_command_with_a_failing_server_finishes_and_fails(server, synthetic, tmp_path, capsys):
    out_path = tmp_path / "out.jsonl"
    args = ["judge", "--input", str(synthetic), "--output", str(out_path), "--quiet"]
    # Every line is written, and a judge that answered nothing makes the run fail.
    assert cli.main([*args, *backend(server, "fail500=99+oracle", "--max-retries", "0")]) == 1
    captured = capsys.readouterr()
    text = captured.out
    assert "no_verdict" in text and "failures (" in text and "HTTP 500" in text
    assert "the judge gave no verdict for any of the" in captured.err and "HTTP 500" in captured.err
    out = read(out_path)
    assert all(o["first_error"] == -2 and o["credit"] is None for o in out)
    assert all("HTTP 500" in o["judge_error"] for o in out if o["judged"])


def test_backend_needs_a_model(synthetic, capsys):
    assert cli.main(["judge-eval", "--input", str(synthetic), "--backend", "openai"]) == 2
    assert "needs --model" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# The TRL trainer's judging step takes this backend like any other


def test_trainer_judging_step_takes_the_openai_backend(server, tmp_path):
    pytest.importorskip("trl")
    from sgpo_rs.trl.judging import as_judge_fn, run_judge

    judge = CachedJudge(fast(server, "oracle", max_concurrency=4), str(tmp_path / "verdicts.sqlite"))
    problems = [PROBLEM, PROBLEM, PROBLEM]
    responses = [WRONG_AT_1, RIGHT, ""]
    outcome = run_judge(as_judge_fn(judge), problems, responses, [{}] * 3, 30.0)
    first_error, num_steps = outcome.first_error, outcome.num_steps
    assert first_error.tolist() == [1, -1, -2] and num_steps.tolist() == [3, 3, 0]
    assert outcome.message is None and outcome.failed == 0  # an empty response is no failure
    served = stats(server)["requests"]
    again = run_judge(as_judge_fn(judge), problems, responses, [{}] * 3, 30.0)
    assert again.first_error.tolist() == first_error.tolist()
    assert stats(server)["requests"] == served  # the cache answered: nothing judged twice
    # A server that fails every request: missing verdicts and a message that says so (no exception).
    down = fast("http://127.0.0.1:9/v1", "oracle", max_retries=0, timeout_s=2.0)
    outcome = run_judge(as_judge_fn(down), problems, responses, [{}] * 3, 30.0)
    assert outcome.first_error.tolist() == [-2, -2, -2]
    assert outcome.failed == 2 and "2 of 3 verdicts carry an error" in outcome.message
