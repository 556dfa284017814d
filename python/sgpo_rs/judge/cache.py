"""A persistent verdict cache (sqlite), safe for several processes writing at once.

Key: ``sha256`` of (judge identity, prompt version, problem, response). Only real verdicts
(``first_error >= -1``) are stored: a failure is retried next time. Concurrency: WAL journal
(readers never block the writer), a busy timeout, ``INSERT OR IGNORE`` (the first writer of a key
wins; a verdict for a key never changes), one short transaction per batch, and a connection per
call, so a :class:`CachedJudge` may be shared by threads and used from forked workers.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from contextlib import closing
from typing import Dict, Iterable, List, Optional, Tuple

from .verdict import StepJudge, Verdict

_SCHEMA = """
CREATE TABLE IF NOT EXISTS verdicts (
    key TEXT PRIMARY KEY,
    judge TEXT NOT NULL,
    prompt_version TEXT NOT NULL,
    first_error INTEGER NOT NULL,
    num_steps INTEGER NOT NULL,
    raw TEXT NOT NULL,
    latency_s REAL NOT NULL,
    created REAL NOT NULL
)
"""


def cache_key(
    identity: str, prompt_version: str, problem: str, response: str, reference: Optional[str] = None
) -> str:
    """The cache key: a hex sha256 of the fields (JSON-encoded, so no field can run into the
    next). A reference solution, when the critic saw one, is part of it (without one the key is
    the four-field key of earlier versions, so existing caches stay valid)."""
    fields = [identity, prompt_version, problem, response]
    if reference is not None:
        fields.append({"reference": reference})
    blob = json.dumps(fields, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()


class VerdictCache:
    """The sqlite file at ``path`` (created with its folder if missing).

    Args:
        path: the database file.
        timeout_s: how long a writer waits for the lock before retrying (``busy_timeout``).
        retries: attempts for a write that still finds the database locked.
    """

    def __init__(self, path: str, *, timeout_s: float = 30.0, retries: int = 5) -> None:
        self.path, self.timeout_s, self.retries = os.fspath(path), timeout_s, retries
        folder = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(folder, exist_ok=True)
        self._retry(self._init)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=self.timeout_s, isolation_level=None)
        conn.execute(f"PRAGMA busy_timeout = {int(self.timeout_s * 1000)}")
        return conn

    def _init(self) -> None:
        with closing(self._connect()) as conn:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(_SCHEMA)

    def _retry(self, fn, *args):  # type: ignore[no-untyped-def]
        for attempt in range(self.retries):
            try:
                return fn(*args)
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc) or attempt == self.retries - 1:
                    raise
                time.sleep(0.05 * (attempt + 1))
        return None  # pragma: no cover

    def get_many(self, keys: List[str]) -> Dict[str, Verdict]:
        """The cached verdicts among ``keys``."""
        return self._retry(self._get_many, keys) if keys else {}

    def _get_many(self, keys: List[str]) -> Dict[str, Verdict]:
        found: Dict[str, Verdict] = {}
        with closing(self._connect()) as conn:
            for i in range(0, len(keys), 500):  # sqlite's bound-variable limit
                chunk = keys[i : i + 500]
                rows = conn.execute(
                    "SELECT key, first_error, num_steps, raw, latency_s FROM verdicts WHERE key IN "
                    f"({','.join('?' * len(chunk))})",
                    chunk,
                )
                for key, first_error, num_steps, raw, latency_s in rows:
                    found[key] = Verdict(first_error, num_steps, raw=raw, latency_s=latency_s)
        return found

    def put_many(self, items: Iterable[Tuple[str, str, str, Verdict]]) -> int:
        """Store ``(key, identity, prompt_version, verdict)`` items that have a verdict; keys
        already present are left as they are. Returns the number of items offered for storing."""
        rows = [
            (key, identity, version, v.first_error, v.num_steps, v.raw, v.latency_s, time.time())
            for key, identity, version, v in items
            if v.has_verdict
        ]
        if rows:
            self._retry(self._put_many, rows)
        return len(rows)

    def _put_many(self, rows: list) -> None:  # type: ignore[type-arg]
        with closing(self._connect()) as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany("INSERT OR IGNORE INTO verdicts VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def __len__(self) -> int:
        with closing(self._connect()) as conn:
            return int(conn.execute("SELECT COUNT(*) FROM verdicts").fetchone()[0])


class CachedJudge:
    """Wraps a :class:`~sgpo_rs.judge.StepJudge`: cached verdicts are returned as they are, and
    the inner judge is called once per batch, on the misses only.

    Args:
        inner: the judge.
        path: the sqlite file, or an open :class:`VerdictCache`.
        prompt_version: part of the key; defaults to ``inner.prompt_version`` or ``""``.

    Attributes ``hits`` and ``misses`` count responses since construction.
    """

    def __init__(self, inner: StepJudge, path, *, prompt_version: Optional[str] = None) -> None:  # type: ignore[no-untyped-def]
        self.inner = inner
        self.cache = path if isinstance(path, VerdictCache) else VerdictCache(path)
        self.prompt_version = (
            str(getattr(inner, "prompt_version", "")) if prompt_version is None else prompt_version
        )
        self.hits = self.misses = 0

    @property
    def identity(self) -> str:
        return self.inner.identity

    @property
    def accepts_references(self) -> bool:
        return bool(getattr(self.inner, "accepts_references", False))

    def judge(
        self, problems: List[str], responses: List[str], references: Optional[List[Optional[str]]] = None
    ) -> List[Verdict]:
        identity, version = self.inner.identity, self.prompt_version
        if references is not None and not any(r is not None for r in references):
            references = None
        if references is not None and not self.accepts_references:
            raise TypeError(f"references: the judge {identity} does not take reference solutions")
        refs = references if references is not None else [None] * len(responses)
        # A reference changes the prompt: its template's version joins the key.
        ref_version = f"{version}|{getattr(self.inner, 'reference_prompt_version', '')}"
        keys = [
            cache_key(identity, version if ref is None else ref_version, p, r, ref)
            for p, r, ref in zip(problems, responses, refs)
        ]
        cached = self.cache.get_many(list(set(keys)))
        todo = [i for i, key in enumerate(keys) if key not in cached]
        self.hits += len(keys) - len(todo)
        self.misses += len(todo)
        out: List[Optional[Verdict]] = [cached.get(key) for key in keys]
        if todo:
            sub_problems, sub_responses = [problems[i] for i in todo], [responses[i] for i in todo]
            if references is None:
                fresh = self.inner.judge(sub_problems, sub_responses)
            else:
                fresh = self.inner.judge(sub_problems, sub_responses, references=[refs[i] for i in todo])
            if len(fresh) != len(todo):
                raise RuntimeError(f"{identity}: judged {len(todo)} responses, got {len(fresh)} verdicts")
            for i, verdict in zip(todo, fresh):
                out[i] = verdict
            self.cache.put_many((keys[i], identity, version, v) for i, v in zip(todo, fresh))
        return [v for v in out if v is not None]
