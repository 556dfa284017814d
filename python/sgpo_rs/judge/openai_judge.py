"""A prompted critic behind any OpenAI-compatible chat-completions server (vLLM, SGLang, hosted APIs).

    from sgpo_rs.judge import OpenAIJudge
    judge = OpenAIJudge("Qwen/QwQ-32B", base_url="http://127.0.0.1:8000/v1", max_concurrency=32)
    verdicts = judge.judge(problems, responses)

Prompts and parsing are :class:`~sgpo_rs.judge.CriticJudge`'s (the ProcessBench critic prompt with
injected tags neutralised, the last ``\\boxed{}`` of the reply). Each prompt is one chat request
(the prompt as the user message, after an optional system message), sent from a pool of at most
``max_concurrency`` threads, each with a ``timeout_s`` deadline.

Failures never raise: a request that still fails after its retries is a missing verdict
(``first_error = -2``) with ``error`` saying why, and the rest of the batch keeps its verdicts.
Retried (up to ``max_retries`` times, exponential backoff with jitter, honouring ``Retry-After``):
timeouts, connection errors, HTTP 408, 409, 429 and 5xx. Not retried: other 4xx, a reply that is
not a chat completion (malformed JSON), a stream that ends without a ``finish_reason`` (cut off),
and a reply cut at ``max_tokens`` (its last box is not a final answer; ``accept_truncated=True``
parses it anyway).

The API key comes from the environment variable ``api_key_env`` (default ``OPENAI_API_KEY``); when
it is unset and ``base_url`` (or ``OPENAI_BASE_URL``) names your own server, a placeholder is sent
(local servers ignore it). The key is never logged, and never part of ``identity``, ``raw`` or
``error`` (error texts are scrubbed of it, and authentication failures report only their status).

Needs the ``openai`` package (``pip install "sgpo-rs[openai]"``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, List, Optional, Tuple, Union
from urllib.parse import urlsplit

from .critic import CriticJudge

logger = logging.getLogger(__name__)

PLACEHOLDER_KEY = "EMPTY"
"""Sent as the API key to a ``base_url`` server when the key's environment variable is unset."""

RETRY_STATUS = frozenset({408, 409, 429})
"""HTTP statuses retried besides 5xx."""


class JudgeRequestError(RuntimeError):
    """Why one chat request produced no reply (its message is free of the API key)."""


class OpenAIJudge(CriticJudge):
    """A :class:`~sgpo_rs.judge.StepJudge` asking a chat model through the OpenAI client.

    Args:
        model: the served model name.
        base_url: the server's OpenAI-compatible root, e.g. ``"http://127.0.0.1:8000/v1"``;
            ``None``: the client's default (``OPENAI_BASE_URL``, else the OpenAI API).
        api_key_env: the environment variable holding the key.
        max_concurrency: requests in flight at once, at most.
        timeout_s: deadline of one request (connect, send, and the whole reply).
        max_retries: retries of a request after a retryable failure.
        backoff_s, max_backoff_s: the n-th retry waits ``min(max_backoff_s, backoff_s * 2**n)``
            scaled by a random factor in ``[0.5, 1]`` (or the server's ``Retry-After``, capped at
            ``max_backoff_s``).
        temperature, max_tokens: decoding settings (part of ``identity``).
        stream: ask for server-sent events and assemble the reply from its chunks.
        system_prompt: an optional system message before the critic prompt.
        accept_truncated: parse replies cut at ``max_tokens`` instead of treating them as missing.
        extra_body: extra request fields (e.g. vLLM's ``{"top_k": 1}``); part of ``identity``.
        template, prompt_version, delimiter: as :class:`~sgpo_rs.judge.CriticJudge`.
        identity: override the default ``openai:<model>@<host>|t=...|max_tokens=...|<prompt>``.
    """

    def __init__(
        self,
        model: str,
        *,
        base_url: Optional[str] = None,
        api_key_env: str = "OPENAI_API_KEY",
        max_concurrency: int = 8,
        timeout_s: float = 120.0,
        max_retries: int = 4,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        temperature: float = 0.0,
        max_tokens: int = 4096,
        stream: bool = False,
        system_prompt: Optional[str] = None,
        accept_truncated: bool = False,
        extra_body: Optional[Dict[str, Any]] = None,
        template: Optional[str] = None,
        prompt_version: Optional[str] = None,
        delimiter: str = "\n\n",
        identity: Optional[str] = None,
    ) -> None:
        try:
            import openai
        except ImportError as exc:  # pragma: no cover - exercised only without the extra
            raise ImportError('OpenAIJudge needs the openai package: pip install "sgpo-rs[openai]"') from exc
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency: expected >= 1, got {max_concurrency}")
        if max_retries < 0:
            raise ValueError(f"max_retries: expected >= 0, got {max_retries}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s: expected > 0, got {timeout_s}")
        key = os.environ.get(api_key_env) if api_key_env else None
        if not key:
            if base_url is None and not os.environ.get("OPENAI_BASE_URL"):
                raise ValueError(
                    f"OpenAIJudge: the environment variable {api_key_env} is not set; set it, or give "
                    "base_url for a server that needs no key"
                )
            key = PLACEHOLDER_KEY
        self._openai = openai
        self._key = key
        # The client's own retries are off: ours add jitter, count every failure kind and never raise.
        self._client = openai.OpenAI(api_key=key, base_url=base_url, timeout=timeout_s, max_retries=0)
        self.model, self.base_url = model, str(self._client.base_url)
        self.max_concurrency, self.timeout_s, self.max_retries = max_concurrency, timeout_s, max_retries
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self.temperature, self.max_tokens, self.stream = temperature, max_tokens, stream
        self.system_prompt, self.accept_truncated = system_prompt, accept_truncated
        self.extra_body = dict(extra_body or {})
        self._random = random.Random()
        self._random_lock = threading.Lock()
        super().__init__(
            self._generate, "", template=template, prompt_version=prompt_version, delimiter=delimiter
        )
        self.identity = identity if identity is not None else self._default_identity()

    def _default_identity(self) -> str:
        parts = [
            f"openai:{self.model}@{_host(self.base_url)}",
            f"t={self.temperature:g}",
            f"max_tokens={self.max_tokens}",
            self.prompt_version,
        ]
        if self.system_prompt is not None:
            parts.append(f"system={_digest(self.system_prompt)}")
        if self.extra_body:
            parts.append(f"extra={_digest(repr(sorted(self.extra_body.items())))}")
        if self.accept_truncated:
            parts.append("accept_truncated")
        return "|".join(parts)

    def __repr__(self) -> str:
        return f"OpenAIJudge({self.identity!r})"

    # -------------------------------------------------------------------------------------------
    # Requests

    def _generate(self, prompts: List[str]) -> List[Union[str, BaseException]]:
        if len(prompts) == 1:
            return [self._complete(prompts[0])]
        with ThreadPoolExecutor(min(self.max_concurrency, len(prompts)), "sgpo-openai-judge") as pool:
            return list(pool.map(self._complete, prompts))

    def _complete(self, prompt: str) -> Union[str, BaseException]:
        """One prompt's reply, or the :class:`JudgeRequestError` of its last failed attempt."""
        messages = [{"role": "user", "content": prompt}]
        if self.system_prompt is not None:
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        attempt = 0
        while True:
            try:
                return self._request(messages)
            except Exception as exc:  # noqa: BLE001 - every failure becomes a missing verdict
                retry, wait = self._classify(exc, attempt)
                message = self._describe(exc)
                if not retry or attempt >= self.max_retries:
                    tries = f" (after {attempt + 1} attempts)" if attempt else ""
                    return JudgeRequestError(message + tries)
                logger.debug("judge request failed (%s); retry %d in %.2f s", message, attempt + 1, wait)
                time.sleep(wait)
                attempt += 1

    def _request(self, messages: List[Dict[str, str]]) -> str:
        options: Dict[str, Any] = dict(
            model=self.model,
            messages=messages,
            temperature=self.temperature,
            max_tokens=self.max_tokens,
            timeout=self.timeout_s,
        )
        if self.extra_body:
            options["extra_body"] = self.extra_body
        if self.stream:
            return self._streamed(options)
        completion = self._client.chat.completions.create(**options)
        choices = getattr(completion, "choices", None)
        if not isinstance(choices, list) or not choices:
            raise _Malformed("the reply is not a chat completion (no choices)")
        message = getattr(choices[0], "message", None)
        content = getattr(message, "content", None)
        if not isinstance(content, str):
            raise _Malformed("the reply has no message content")
        self._check_finish(getattr(choices[0], "finish_reason", None))
        return content

    def _streamed(self, options: Dict[str, Any]) -> str:
        parts: List[str] = []
        finish = None
        deadline = time.monotonic() + self.timeout_s
        with self._client.chat.completions.create(stream=True, **options) as events:
            for event in events:
                choices = getattr(event, "choices", None)
                if not isinstance(choices, list):
                    raise _Malformed("a stream chunk is not a chat completion chunk")
                for choice in choices:
                    delta = getattr(choice, "delta", None)
                    text = getattr(delta, "content", None)
                    if isinstance(text, str):
                        parts.append(text)
                    if getattr(choice, "finish_reason", None) is not None:
                        finish = choice.finish_reason
                if time.monotonic() > deadline:
                    raise _StreamTimeout(f"the stream ran past the {self.timeout_s:g} s timeout")
        if finish is None:
            raise _Malformed("the stream ended without a finish_reason (cut off)")
        self._check_finish(finish)
        return "".join(parts)

    def _check_finish(self, finish: Any) -> None:
        if finish == "length" and not self.accept_truncated:
            raise _Malformed(f"the reply was cut at max_tokens={self.max_tokens} (finish_reason=length)")

    def _classify(self, exc: BaseException, attempt: int) -> Tuple[bool, float]:
        """``(retryable, seconds to wait before the retry)``."""
        openai = self._openai
        retry = isinstance(exc, (openai.APITimeoutError, openai.APIConnectionError, _StreamTimeout))
        retry_after = None
        if isinstance(exc, openai.APIStatusError):
            status = exc.status_code
            retry = status in RETRY_STATUS or status >= 500
            retry_after = _retry_after(getattr(exc, "response", None))
        if not retry:
            return False, 0.0
        if retry_after is not None:
            return True, min(self.max_backoff_s, retry_after)
        with self._random_lock:
            jitter = self._random.uniform(0.5, 1.0)
        return True, min(self.max_backoff_s, self.backoff_s * 2**attempt) * jitter

    def _describe(self, exc: BaseException) -> str:
        """A one-line reason, without the API key (auth failures: the status only)."""
        openai = self._openai
        if isinstance(exc, openai.APIStatusError):
            if exc.status_code in (401, 403):
                text = f"HTTP {exc.status_code}: authentication failed (check {type(self).__name__}'s key)"
            else:
                body = str(getattr(exc, "message", "") or exc)
                text = f"HTTP {exc.status_code}: {body}"
        elif isinstance(exc, (openai.APITimeoutError, _StreamTimeout)):
            text = f"timeout after {self.timeout_s:g} s"
        elif isinstance(exc, _Malformed):
            text = str(exc)
        elif isinstance(exc, (ValueError, openai.APIResponseValidationError)):
            text = f"malformed reply ({type(exc).__name__}: {exc})"
        else:
            text = f"{type(exc).__name__}: {exc}"
        text = " ".join(text.split())[:500]
        if self._key and self._key != PLACEHOLDER_KEY:
            text = text.replace(self._key, "***")
        return text

    def close(self) -> None:
        """Close the HTTP connections (also done when the judge is garbage collected)."""
        self._client.close()


class _Malformed(RuntimeError):
    """The server answered, but not with a usable chat completion."""


class _StreamTimeout(RuntimeError):
    """A stream kept sending past the request deadline."""


def _host(url: str) -> str:
    """``host[:port]`` of ``url``, without any user info."""
    parts = urlsplit(url)
    host = parts.hostname or url
    return f"{host}:{parts.port}" if parts.port else host


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:12]


def _retry_after(response: Any) -> Optional[float]:
    """Seconds from a ``Retry-After`` (or ``retry-after-ms``) header, if it holds a number."""
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) * scale
        except ValueError:
            continue
        if seconds >= 0:
            return seconds
    return None
