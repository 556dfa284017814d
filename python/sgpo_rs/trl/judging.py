"""Calling a step-wise judge from inside the TRL trainer: text extraction (the calling itself,
timeouts and validation, is :mod:`sgpo_rs.judge.calling`).

Problems and responses reach the judge as text, also for conversational datasets.
"""

from __future__ import annotations

from typing import Any

from ..judge.calling import JudgeFn, JudgeTimeout, as_judge_fn, call_with_timeout, run_judge

__all__ = [
    "JudgeFn",
    "JudgeTimeout",
    "as_judge_fn",
    "call_with_timeout",
    "completion_text",
    "judge_name",
    "prompt_text",
    "run_judge",
]


def _content_text(content: Any) -> str:
    """A message's ``content``: a string, or a list of parts whose ``text`` parts are joined."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, (list, tuple)):
        texts = []
        for part in content:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                texts.append(part["text"])
        return "".join(texts)
    return str(content)


def _is_messages(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and all(isinstance(m, dict) and "content" in m for m in value)


def prompt_text(prompt: Any) -> str:
    """The problem a prompt poses: the prompt itself, or, for a conversation, the text of its last
    user message (the last message if none is a user's)."""
    if _is_messages(prompt) and prompt:
        users = [m for m in prompt if m.get("role") == "user"]
        return _content_text((users or list(prompt))[-1].get("content"))
    return _content_text(prompt)


def completion_text(completion: Any) -> str:
    """A completion's text: itself, or, for a conversation, its assistant messages' texts joined
    by blank lines (every message's if none is an assistant's)."""
    if _is_messages(completion):
        messages = [m for m in completion if m.get("role") == "assistant"] or list(completion)
        return "\n\n".join(_content_text(m.get("content")) for m in messages)
    return _content_text(completion)


def judge_name(judge: Any) -> str:
    identity = getattr(judge, "identity", None)
    if isinstance(identity, str):
        return identity
    return getattr(judge, "__qualname__", None) or type(judge).__qualname__
