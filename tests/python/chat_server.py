"""A small OpenAI-compatible chat-completions server for the judge tests and benchmarks.

    python tests/python/chat_server.py [--model-dir DIR] [--port 0]

prints ``PORT <n>`` on its first line once it listens on 127.0.0.1, then serves until killed.
``POST /v1/chat/completions`` (plain JSON, or server-sent events with ``"stream": true``);
``GET /stats`` (requests seen, most in flight at once, the last ``Authorization`` header and
request body);
``POST /reset`` (clears the stats and the per-prompt failure counts); ``GET /v1/models``.

What a request gets is scripted by its ``model`` field, ``+``-separated directives:

- ``tiny`` (the default): the reply of the tiny random causal LM in ``--model-dir`` (loaded in the
  background at start; requests wait for it), greedy at temperature 0, at most 24 new tokens;
- ``oracle``: reads the critic prompt back (problem and ``<paragraph_i>`` blocks), checks the
  chain with ``RuleJudge`` and answers ``\\boxed{first error}``;
- ``reply=TEXT`` (must be last: TEXT is the rest of the name): answers TEXT;
- ``slow=S``: waits S seconds before answering;
- ``fail500=N`` / ``fail429=N``: the first N requests of each distinct prompt get HTTP 500 / 429
  (429 with ``Retry-After: 0.05``; the 500 message echoes the ``Authorization`` header);
- ``unauthorized``: HTTP 401 whose message quotes the key it was sent (as hosted APIs do);
- ``malformed``: HTTP 200 with a body that is not JSON;
- ``truncated``: a stream stops after a few chunks without a finish reason or ``[DONE]``; a plain
  reply stops half-way through its declared length.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, List, Optional, Tuple

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

_PARAGRAPH = re.compile(r"<paragraph_(\d+)>\n(.*?)\n</paragraph_\1>", re.DOTALL)


class TinyModel:
    """The tiny causal LM, loaded on a background thread; one generation at a time."""

    def __init__(self, folder: Optional[str]) -> None:
        self.folder, self.ready, self.lock = folder, threading.Event(), threading.Lock()
        self.error: Optional[str] = None
        if folder is None:
            self.error = "no --model-dir: the tiny model is not available"
            self.ready.set()
        else:
            threading.Thread(target=self._load, daemon=True).start()

    def _load(self) -> None:
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer

            torch.set_num_threads(1)
            self.torch = torch
            self.tokenizer = AutoTokenizer.from_pretrained(self.folder)
            self.model = AutoModelForCausalLM.from_pretrained(self.folder).eval()
        except Exception as exc:  # noqa: BLE001 - reported to every request
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.ready.set()

    def generate(
        self, messages: List[Dict[str, str]], max_tokens: int, temperature: float
    ) -> Tuple[str, str]:
        """``(text, finish_reason)``."""
        self.ready.wait()
        if self.error is not None:
            raise RuntimeError(self.error)
        with self.lock:
            prompt = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            ids = self.tokenizer(prompt, return_tensors="pt")
            new = min(max_tokens, 24)
            options: Dict[str, Any] = {"do_sample": False}
            if temperature > 0:
                options = {"do_sample": True, "temperature": temperature}
            with self.torch.inference_mode():
                out = self.model.generate(**ids, max_new_tokens=new, **options)
            tokens = out[0, ids["input_ids"].shape[1] :]
            finish = "stop" if (tokens == self.tokenizer.eos_token_id).any() else "length"
            return self.tokenizer.decode(tokens, skip_special_tokens=True), finish


def oracle_reply(prompt: str) -> str:
    """The rule judge's verdict on the critic prompt's problem and paragraphs."""
    from sgpo_rs.judge import RuleJudge

    problem = prompt.split("Problem:\n", 1)[-1].split("\n\nSolution:\n", 1)[0]
    steps = [m.group(2) for m in _PARAGRAPH.finditer(prompt)]
    k = RuleJudge().judge([problem], ["\n\n".join(steps)])[0].first_error
    return f"I checked each paragraph against the problem.\n\nThe first wrong paragraph: \\boxed{{{k}}}"


def parse_directives(model: str) -> Dict[str, str]:
    head, sep, reply = model.partition("reply=")
    directives: Dict[str, str] = {}
    for part in head.split("+"):
        if part:
            name, _, value = part.partition("=")
            directives[name] = value
    if sep:
        directives["reply"] = reply
    return directives


class State:
    def __init__(self, model: TinyModel) -> None:
        self.model, self.lock = model, threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.requests = self.in_flight = self.max_in_flight = 0
        self.attempts: Dict[str, int] = {}
        self.authorization: Optional[str] = None
        self.last_request: Optional[Dict[str, Any]] = None

    def stats(self) -> Dict[str, Any]:
        with self.lock:
            return {
                "requests": self.requests,
                "in_flight": self.in_flight,
                "max_in_flight": self.max_in_flight,
                "authorization": self.authorization,
                "last_request": self.last_request,
            }


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: without TCP_NODELAY, a kept-alive connection
    # waits ~40 ms per reply on the client's delayed ACK.
    disable_nagle_algorithm = True
    server: Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base signature
        pass

    # ---------------------------------------------------------------------------------------
    def _send_json(self, status: int, body: Any, headers: Optional[Dict[str, str]] = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802
        if self.path == "/stats":
            self._send_json(200, self.server.state.stats())
        elif self.path == "/v1/models":
            self._send_json(200, {"object": "list", "data": [{"id": "tiny", "object": "model"}]})
        else:
            self._send_json(404, {"error": {"message": "not found"}})

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        if self.path == "/reset":
            with self.server.state.lock:
                self.server.state.reset()
            self._send_json(200, {})
            return
        if self.path.rstrip("/") != "/v1/chat/completions":
            self._send_json(404, {"error": {"message": f"no route {self.path}"}})
            return
        state = self.server.state
        with state.lock:
            state.requests += 1
            state.in_flight += 1
            state.max_in_flight = max(state.max_in_flight, state.in_flight)
            state.authorization = self.headers.get("Authorization")
        try:
            request = json.loads(body)
            with state.lock:
                state.last_request = request
            self._complete(request)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout test)
        finally:
            with state.lock:
                state.in_flight -= 1

    def _complete(self, request: Dict[str, Any]) -> None:
        state = self.server.state
        model = str(request.get("model", "tiny"))
        messages = request.get("messages") or []
        prompt = str(messages[-1].get("content", "")) if messages else ""
        d = parse_directives(model)
        if "slow" in d:
            time.sleep(float(d["slow"] or 1))
        key = hashlib.sha256(f"{model}\0{prompt}".encode()).hexdigest()
        with state.lock:
            attempt = state.attempts.get(key, 0)
            state.attempts[key] = attempt + 1
        auth = str(self.headers.get("Authorization"))
        if "unauthorized" in d:
            token = auth.split(" ", 1)[-1]
            message = f"Incorrect API key provided: {token}."
            self._send_json(401, {"error": {"message": message, "code": "invalid_api_key"}})
            return
        for status in (500, 429):
            if attempt < int(d.get(f"fail{status}", "0") or 0):
                headers = {"Retry-After": "0.05"} if status == 429 else {}
                message = f"scripted {status} (request had Authorization: {auth})"
                self._send_json(status, {"error": {"message": message}}, headers)
                return
        if "malformed" in d:
            data = b'{"id": "chatcmpl-x", "choices": [{"message": '
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        if "reply" in d:
            text, finish = d["reply"], "stop"
        elif "oracle" in d:
            text, finish = oracle_reply(prompt), "stop"
        else:
            max_tokens = int(request.get("max_tokens") or request.get("max_completion_tokens") or 16)
            try:
                text, finish = state.model.generate(
                    messages, max_tokens, float(request.get("temperature") or 0)
                )
            except Exception as exc:  # noqa: BLE001
                self._send_json(500, {"error": {"message": str(exc)}})
                return
        if request.get("stream"):
            self._stream(model, text, finish, truncated="truncated" in d)
        else:
            self._plain(model, text, finish, truncated="truncated" in d)

    def _plain(self, model: str, text: str, finish: str, *, truncated: bool) -> None:
        body = {
            "id": "chatcmpl-tiny",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
            ],
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
        }
        if not truncated:
            self._send_json(200, body)
            return
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data[: len(data) // 2])
        self.wfile.flush()
        self.close_connection = True

    def _stream(self, model: str, text: str, finish: str, *, truncated: bool) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True

        def event(delta: Dict[str, Any], finish_reason: Optional[str]) -> None:
            chunk = {
                "id": "chatcmpl-tiny",
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
            }
            self.wfile.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
            self.wfile.flush()

        event({"role": "assistant", "content": ""}, None)
        pieces = [text[i : i + 7] for i in range(0, len(text), 7)]
        if truncated:
            pieces = pieces[: max(1, len(pieces) // 2)]
        for piece in pieces:
            event({"content": piece}, None)
        if truncated:
            return
        event({}, finish)
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: Tuple[str, int], state: State) -> None:
        super().__init__(address, Handler)
        self.state = state


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default=None, help="tiny causal LM folder (tiny_models.py)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    server = Server((args.host, args.port), State(TinyModel(args.model_dir)))
    print(f"PORT {server.server_address[1]}", flush=True)
    try:
        server.serve_forever(poll_interval=0.1)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    sys.exit(main())
