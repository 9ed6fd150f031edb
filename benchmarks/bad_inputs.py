"""Issue 17 section 3: run every bad or unusual input of tests/bad_input_cases.py in a fresh
``python -m compressor`` process and count the cases handled cleanly (exit 2 with one ``error:`` line naming the
key, flag or file, nothing left behind; or, for the cases that must work, exit 0 with the right result).

    python benchmarks/bad_inputs.py                # all cases, one table row each, then the count
    python benchmarks/bad_inputs.py --group bench  # one group

Not a timing measurement: it runs on any machine. The decoded-data cache goes to a fresh temporary folder.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.bad_input_cases import CASES, judge, snapshot  # noqa: E402


def run_case(case, cache: Path, timeout: float) -> tuple[str | None, float, str]:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        env = {**os.environ, "COMPRESSOR_CACHE": str(cache), "PYTHONPATH": str(ROOT)}
        args = case.build(folder)
        if case.env:
            env.update(case.env(folder))
        t0 = time.perf_counter()

        def once() -> subprocess.CompletedProcess:
            return subprocess.run([sys.executable, "-m", "compressor", *args], cwd=folder, env=env,
                                  capture_output=True, text=True, timeout=timeout)

        try:
            if case.then is not None:
                once()
                case.then(folder)
            before = snapshot(folder)
            done = once()
        except subprocess.TimeoutExpired:
            return f"no answer within {timeout:.0f} s", time.perf_counter() - t0, ""
        problem = judge(case, done.returncode, done.stderr, before, snapshot(folder), folder)
        return problem, time.perf_counter() - t0, done.stderr.strip()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--group", help="only this group (recipe, data, paths, model, bench, check, cache)")
    p.add_argument("--timeout", type=float, default=180.0, help="seconds per case")
    p.add_argument("--show", action="store_true", help="print the error line of every case, not only of failures")
    args = p.parse_args()
    cases = [c for c in CASES if args.group in (None, c.group)]
    failures = 0
    with tempfile.TemporaryDirectory() as cache:
        for case in cases:
            problem, seconds, stderr = run_case(case, Path(cache), args.timeout)
            failures += problem is not None
            detail = problem if problem is not None else stderr if args.show else ""
            print(f"{'ok  ' if problem is None else 'FAIL'} {case.id:<62} {seconds:5.1f} s"
                  + (f"\n       {detail[:300]}" if detail else ""), flush=True)
    print(f"\n{len(cases) - failures} of {len(cases)} cases handled cleanly")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
