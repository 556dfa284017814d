"""`sgpo-rs judge` and `sgpo-rs judge-eval` end to end: output columns, resume after an
interruption (no record lost or duplicated), the cache, the ProcessBench report, and the credit
column feeding sgpo_rewards."""

import json
import subprocess
import sys

import numpy as np
import pytest
import sgpo_rs as sg
from sgpo_rs import cli
from sgpo_rs.judge.cli import done_keys, record_keys


def read(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.fixture
def synthetic(tmp_path):
    path = tmp_path / "set.jsonl"
    assert cli.main(["judge-eval", "--make-synthetic", "60", "--output", str(path), "--seed", "5"]) == 0
    return path


def test_make_synthetic_is_seeded(tmp_path, synthetic):
    again = tmp_path / "again.jsonl"
    cli.main(["judge-eval", "--make-synthetic", "60", "--output", str(again), "--seed", "5"])
    assert again.read_text() == synthetic.read_text()
    records = read(synthetic)
    assert len(records) == 60 and {"problem", "steps", "response", "label"} <= set(records[0])


def test_judge_eval_reports_f1_one(synthetic, capsys):
    assert cli.main(["judge-eval", "--input", str(synthetic), "--judge", "rule"]) == 0
    out = capsys.readouterr().out
    assert "F1:" in out and "100.0" in out.split("F1:")[1].splitlines()[0]
    assert "missing verdicts:              0" in out


def test_judge_end_to_end(tmp_path, synthetic, capsys):
    out_path = tmp_path / "out.jsonl"
    assert cli.main(["judge", "--input", str(synthetic), "--output", str(out_path)]) == 0
    captured = capsys.readouterr()
    assert "judging [" in captured.err and "100%" in captured.err
    assert "verdicts: found_error" in captured.out
    records, out = read(synthetic), read(out_path)
    assert [r["id"] for r in out] == [r["id"] for r in records]
    for r, o in zip(records, out):
        if r["correct"]:
            assert o["judged"] is False and o["first_error"] == -2 and o["credit"] is None
        else:
            assert o["judged"] is True and o["first_error"] == r["label"]
            assert o["num_steps"] == len(r["steps"])
            expected = 1.0 if r["label"] == -1 else r["label"] / len(r["steps"])
            assert o["credit"] == pytest.approx(expected)


def test_judge_all_and_cache(tmp_path, synthetic, capsys):
    cache = str(tmp_path / "cache.sqlite")
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    base = ["judge", "--input", str(synthetic), "--all", "--cache", cache, "--quiet"]
    assert cli.main([*base, "--output", str(first)]) == 0
    assert "cache: 0 hits, 60 misses" in capsys.readouterr().out
    assert cli.main([*base, "--output", str(second)]) == 0
    assert "cache: 60 hits, 0 misses" in capsys.readouterr().out
    out = read(second)
    assert all(o["judged"] for o in out) and out == read(first)
    assert [o["first_error"] for o in out] == [r["label"] for r in read(synthetic)]


def test_judge_resumes_without_losing_or_duplicating(tmp_path, synthetic, capsys):
    full, cut = tmp_path / "full.jsonl", tmp_path / "cut.jsonl"
    args = ["judge", "--input", str(synthetic), "--all", "--quiet"]
    assert cli.main([*args, "--output", str(full)]) == 0
    data = full.read_bytes()
    lines = data.split(b"\n")
    # Interrupted after 23 records, in the middle of writing the 24th.
    cut.write_bytes(b"\n".join(lines[:23]) + b"\n" + lines[23][: len(lines[23]) // 2])
    capsys.readouterr()
    assert cli.main([*args, "--output", str(cut)]) == 0
    assert "23 already in the output, 37 judged" in capsys.readouterr().out
    assert cut.read_bytes() == data
    keys = [o["record_key"] for o in read(cut)]
    assert len(keys) == len(set(keys)) == 60
    # Running again changes nothing.
    assert cli.main([*args, "--output", str(cut)]) == 0
    assert cut.read_bytes() == data


def test_record_keys_are_stable_and_distinct(tmp_path):
    records = [
        {"problem": "p", "response": "r"},
        {"problem": "p", "response": "r"},
        {"id": 7, "problem": "p"},
    ]
    keys = record_keys(records)
    assert len(set(keys)) == 3 and keys[1] == keys[0] + "#2" and keys[2] == "id:7"
    assert record_keys(records) == keys
    path = tmp_path / "o.jsonl"
    path.write_text('{"record_key": "a"}\nnot json\n{"record_key": "b"}\n')
    assert done_keys(str(path)) == {"a"} and path.read_text() == '{"record_key": "a"}\n'


def test_duplicate_records_are_each_written_once(tmp_path):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    row = {"problem": "Start from 1 and apply: + 1.", "response": "1 + 1 = 2", "correct": False}
    src.write_text("\n".join(json.dumps(row) for _ in range(3)) + "\n")
    for _ in range(2):
        assert cli.main(["judge", "--input", str(src), "--output", str(out), "--quiet"]) == 0
    assert [o["first_error"] for o in read(out)] == [-1, -1, -1]


def test_credit_column_feeds_sgpo_rewards(tmp_path, capsys):
    # Two groups of 4: one all-wrong (diversified by the judge), one with a correct response.
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    problem = "Start from 2 and apply these operations in order: + 3, * 2, - 1, + 4."
    responses = [
        "2 + 3 = 6\n\n6 * 2 = 12\n\n12 - 1 = 11\n\n11 + 4 = 15",  # wrong at 0
        "2 + 3 = 5\n\n5 * 2 = 11\n\n11 - 1 = 10\n\n10 + 4 = 14",  # wrong at 1
        "2 + 3 = 5\n\n5 * 2 = 10\n\n10 - 1 = 8\n\n8 + 4 = 12",  # wrong at 2
        "2 + 3 = 5\n\n5 * 2 = 10\n\n10 - 1 = 9\n\n9 + 4 = 14",  # wrong at 3
    ]
    right = "2 + 3 = 5\n\n5 * 2 = 10\n\n10 - 1 = 9\n\n9 + 4 = 13"
    rows = [{"problem": problem, "response": r, "correct": False} for r in responses]
    rows += [{"problem": problem, "response": r, "correct": r == right} for r in [right, *responses[1:]]]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert cli.main(["judge", "--input", str(src), "--output", str(out), "--quiet"]) == 0
    out_rows = read(out)
    credit = np.array([np.nan if o["credit"] is None else o["credit"] for o in out_rows])
    np.testing.assert_allclose(credit[:4], [0.0, 0.25, 0.5, 0.75])
    rewards = np.array([1.0 if r["correct"] else 0.0 for r in rows])
    result = sg.sgpo_rewards(rewards, credit=credit, group_size=4, credit_scale=0.5)
    np.testing.assert_allclose(result.rewards[:4], 0.5 * credit[:4])
    np.testing.assert_array_equal(result.rewards[4:], rewards[4:])
    assert result.stats["diversified_groups"] == 1 and result.stats["judge_missing_groups"] == 0
    # The same verdicts through first_error / num_steps give the same rewards.
    via = sg.sgpo_rewards(
        rewards,
        [o["first_error"] for o in out_rows],
        [max(o["num_steps"], 1) for o in out_rows],
        group_size=4,
    )
    np.testing.assert_allclose(via.rewards, result.rewards)


def test_bad_input_and_console_script(tmp_path, capsys):
    missing = str(tmp_path / "nope.jsonl")
    assert cli.main(["judge", "--input", missing, "--output", str(tmp_path / "o")]) == 2
    assert cli.main(["judge-eval", "--input", missing]) == 2
    assert cli.main(["judge-eval"]) == 2
    assert cli.main(["judge", "--input", missing, "--output", "o", "--judge", "nosuch"]) == 2
    assert "unknown judge" in capsys.readouterr().err
    done = subprocess.run(
        [sys.executable, "-m", "sgpo_rs", "judge", "--help"], capture_output=True, text=True, check=True
    )
    assert "--cache" in done.stdout and "--all" in done.stdout


def test_judge_from_module_attr(tmp_path, capsys):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text(json.dumps({"problem": "p", "response": "a\n\nb"}) + "\n")
    spec = "sgpo_rs.judge.rule:RuleJudge"
    assert cli.main(["judge", "--input", str(src), "--output", str(out), "--quiet", "--judge", spec]) == 0
    assert read(out)[0]["first_error"] == 0  # "a" is not an arithmetic step


class ExplodingJudge:
    """A rule judge whose third call fails, as a model server going down mid-run."""

    identity = "rule:arithmetic-chain-v1"

    def __init__(self):
        from sgpo_rs.judge import RuleJudge

        self.inner, self.calls = RuleJudge(), 0

    def judge(self, problems, responses):
        self.calls += 1
        if self.calls == 3:
            raise ConnectionError("server went away")
        return self.inner.judge(problems, responses)


def test_judge_failure_stops_cleanly_and_resumes(tmp_path, synthetic, monkeypatch, capsys):
    from sgpo_rs.judge import cli as judge_cli

    monkeypatch.setitem(judge_cli.JUDGES, "explode", ExplodingJudge)
    full, part = tmp_path / "full.jsonl", tmp_path / "part.jsonl"
    args = ["judge", "--input", str(synthetic), "--all", "--quiet", "--batch-size", "7"]
    assert cli.main([*args, "--output", str(full)]) == 0
    assert cli.main([*args, "--output", str(part), "--judge", "explode"]) == 1
    assert "server went away" in capsys.readouterr().err
    assert len(read(part)) == 14
    assert cli.main([*args, "--output", str(part)]) == 0
    assert part.read_bytes() == full.read_bytes()
    assert cli.main([*args, "--output", str(part), "--batch-size", "0"]) == 2
