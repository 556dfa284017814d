"""The `sgpo-rs` command: `demo` (the main job), `judge`, `judge-eval`, `info`."""

from __future__ import annotations

import argparse
import platform
import sys
from typing import List, Optional


def _info(_: argparse.Namespace) -> int:
    import numpy as np

    from . import __version__

    print(f"sgpo-rs {__version__}")
    print(f"python {platform.python_version()} ({sys.executable})")
    print(f"numpy {np.__version__}")
    try:
        import torch

        print(f"torch {torch.__version__} (cuda available: {torch.cuda.is_available()})")
    except ImportError:
        print("torch not installed (pip install 'sgpo-rs[torch]' for sgpo_rs.torch)")
    from . import _cuda

    found = _cuda.availability()
    if found["usable"]:
        devices = ", ".join(f"{i}: {name} (sm_{arch})" for i, (name, arch) in enumerate(found["devices"]))
        major, minor = found["nvrtc_version"]
        driver = found["driver_version"]
        print(f"cuda path: usable - NVRTC {major}.{minor}, driver {driver}, devices {devices}")
    elif found["built"]:
        nvrtc = "found" if found["nvrtc"] else "missing"
        print(f"cuda path: built, not usable here ({found['reason']}); NVRTC {nvrtc}")
        print("all kernels run on the CPU (rayon)")
    else:
        print(f"cuda path: {found['reason']}; all kernels run on the CPU (rayon)")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    from . import demo
    from .judge import cli as judge_cli

    parser = argparse.ArgumentParser(prog="sgpo-rs", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo.add_arguments(commands.add_parser("demo", help="GRPO vs SGPO on a multi-step toy task"))
    judge_cli.add_arguments(commands.add_parser("judge", help="step-wise verdicts for a JSONL of responses"))
    judge_cli.add_eval_arguments(commands.add_parser("judge-eval", help="ProcessBench metrics of a judge"))
    commands.add_parser("info", help="versions and available compute paths").set_defaults(run=_info)
    args = parser.parse_args(argv)
    return int(args.run(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
