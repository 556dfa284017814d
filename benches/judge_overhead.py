"""Judge pipeline overhead per response, model time excluded.

    python benches/judge_overhead.py            # 2048 synthetic responses, median of 5
    python benches/judge_overhead.py --quick    # 256 responses, median of 3

What a prompted judge costs around the model, in microseconds per response:

  critic           ``CriticJudge`` with a zero-latency generator (it answers ``\\boxed{1}`` at
                   once): splitting, neutralising, building the prompt, parsing the reply.
  + cache miss     the same inside ``CachedJudge`` with an empty sqlite file (a lookup, the call,
                   one write transaction per batch).
  + cache hit      the same batch again: lookups only, the generator is not called.
  thread pool      ``ThreadPoolExecutor(8).map`` of a no-op over the batch (the dispatch cost
                   ``OpenAIJudge`` adds on top of ``critic``).
  openai c=K       ``OpenAIJudge`` against ``tests/python/chat_server.py`` on 127.0.0.1 in scripted
                   mode (``reply=\\boxed{1}``, no model), K requests in flight: the whole round trip
                   (openai client, HTTP, JSON, the stdlib server's own time; both processes share
                   the machine's cores), so an upper bound on the client-side overhead.

Each row times ``judge(problems, responses)`` on batches of ``--batch`` responses; the figures are
medians over ``--repeats`` runs of (time / responses): wall-clock, and the CPU time of this process
(all threads; for the ``openai`` rows that is the client side alone, the server being another
process). Numbers depend on the machine: compare rows from the same run.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, List, Tuple

from sgpo_rs.judge import CachedJudge, CriticJudge, OpenAIJudge, make_synthetic

HERE = os.path.dirname(os.path.abspath(__file__))
SERVER = os.path.join(HERE, "..", "tests", "python", "chat_server.py")


def per_response_us(run: Callable[[], object], n: int, repeats: int) -> Tuple[float, float]:
    """Median wall-clock and median CPU time of this process (all its threads), per response."""
    run()  # warm-up
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        run()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall) / n * 1e6, statistics.median(cpu) / n * 1e6


def batched(judge, problems: List[str], responses: List[str], batch: int) -> Callable[[], object]:
    def run() -> None:
        for i in range(0, len(problems), batch):
            verdicts = judge.judge(problems[i : i + batch], responses[i : i + batch])
            assert all(v.first_error == 1 or v.num_steps < 2 for v in verdicts), verdicts[0]

    return run


def start_server():  # type: ignore[no-untyped-def]
    proc = subprocess.Popen([sys.executable, SERVER, "--port", "0"], stdout=subprocess.PIPE, text=True)
    line: list = []
    reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(30)
    if not line or not line[0].startswith("PORT "):
        proc.kill()
        raise RuntimeError(f"chat server did not start: {line!r}")
    return proc, f"http://127.0.0.1:{int(line[0].split()[1])}/v1"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2048, help="responses")
    parser.add_argument("--batch", type=int, default=256, help="responses per judge call")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="256 responses, 3 repeats")
    args = parser.parse_args()
    if args.quick:
        args.n, args.repeats = 256, 3
    records = make_synthetic(args.n, seed=0, min_steps=3, max_steps=8)
    problems = [r["problem"] for r in records]
    responses = [r["response"] for r in records]
    n, batch, repeats = args.n, args.batch, args.repeats
    print(f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"{n} responses (3-8 steps), batches of {batch}, median of {repeats}\n")
    rows = []

    critic = CriticJudge(lambda prompts: ["\\boxed{1}"] * len(prompts), "zero-latency")
    rows.append(
        (
            "critic (zero-latency generator)",
            per_response_us(batched(critic, problems, responses, batch), n, repeats),
        )
    )

    with tempfile.TemporaryDirectory() as tmp:
        # One empty cache per timed run, created (schema, WAL) before the clock starts.
        empty = [CachedJudge(critic, os.path.join(tmp, f"miss{i}.sqlite")) for i in range(repeats + 1)]

        def miss() -> None:
            batched(empty.pop(), problems, responses, batch)()

        rows.append(("critic + cache miss (sqlite write)", per_response_us(miss, n, repeats)))
        hit = CachedJudge(critic, os.path.join(tmp, "hit.sqlite"))
        batched(hit, problems, responses, batch)()
        rows.append(
            ("critic + cache hit", per_response_us(batched(hit, problems, responses, batch), n, repeats))
        )

    def pool() -> None:
        for i in range(0, n, batch):
            with ThreadPoolExecutor(8) as ex:
                list(ex.map(len, responses[i : i + batch]))

    rows.append(("thread pool (8 workers, no-op)", per_response_us(pool, n, repeats)))

    proc, base_url = start_server()
    try:
        http_n = min(n, 512)
        for concurrency in (1, 8, 32):
            for stream in (False, True):
                judge = OpenAIJudge(
                    "reply=\\boxed{1}", base_url=base_url, max_concurrency=concurrency, stream=stream
                )
                run = batched(judge, problems[:http_n], responses[:http_n], batch)
                label = f"openai c={concurrency}{' stream' if stream else ''} (local HTTP server, scripted)"
                rows.append((label, per_response_us(run, http_n, repeats)))
                judge.close()
    finally:
        proc.terminate()
        proc.wait(10)

    width = max(len(label) for label, _ in rows)
    print(f"{'pipeline':<{width}}  {'wall us/response':>16}  {'client CPU us/response':>22}")
    for label, (wall, cpu) in rows:
        print(f"{label:<{width}}  {wall:16.1f}  {cpu:22.1f}")


if __name__ == "__main__":
    main()
