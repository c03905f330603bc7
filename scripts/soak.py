#!/usr/bin/env python3
"""The fault-injection soak: random seeded faults on a running federation, nothing lost.

A testbed federation of ``--sites`` sites (default 6, k=2 n=4) runs on 127.0.0.1, each
node its own process with audits, scrub and repair in seconds (``--fast-maintenance``).
Round after round for ``--minutes``: a small generated study is pushed to site-a and
protected; one fault hits a site holding some of site-a's fragments (kill -9 and restart,
SIGSTOP for a few seconds, or a fragment file corrupted, deleted, truncated, zero-filled,
or two of them swapped); the round waits until site-a's status shows everything whole
again. Every few rounds and at the end, ``meshpacs recover`` rebuilds site-a's archive
into a folder and every instance is compared with what site-a acknowledged. What the
soak does, step by step: ``meshpacs/testbed/soak.py`` and ``docs/reliability.md``.

The seed (random unless ``--seed``) is printed first, with the command that repeats the
run. Progress lines name rounds, faults and sites, never a patient or a UID. Exit code 0
only when every round healed and every recovery gave back exactly what was acknowledged
(losses: 0); the seed, round and fault of a failure are in the summary. The working
directory (a temporary one unless ``--root``) is removed after a pass and kept after a
failure; every node is stopped by PID in any case, on Ctrl-C and SIGTERM too.

    .venv/bin/python scripts/soak.py --minutes 5              # a random seed
    .venv/bin/python scripts/soak.py --minutes 30 --seed 42   # the issue's 30-minute soak
    .venv/bin/python scripts/soak.py --minutes 2 --json       # the report as one JSON object
"""

from __future__ import annotations

import argparse
import json
import secrets
import shutil
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path
from types import FrameType

from meshpacs.testbed.soak import FAULT_KINDS, run_soak


def _stop_on_term(signum: int, frame: FrameType | None) -> None:
    # A second SIGTERM (``timeout`` forwards one, a shell sends another) must not cut the
    # clean-up short and leave nodes running: from the first on, the rest are ignored.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt  # run the finally blocks: stop every node the soak started


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--minutes", type=float, default=5.0, help="how long to inject faults")
    ap.add_argument("--seed", type=int, help="repeat a run's choices (default: a random seed)")
    ap.add_argument("--sites", type=int, default=6)
    ap.add_argument("--k", type=int, default=2)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument(
        "--kinds",
        help=f"faults in turn, comma-separated (default: drawn from {','.join(FAULT_KINDS)})",
    )
    ap.add_argument("--recover-every", type=int, default=4, help="rounds between recoveries")
    ap.add_argument("--heal-timeout", type=float, default=180.0, help="seconds a round may take")
    ap.add_argument("--root", type=Path, help="working directory (new or empty; always kept)")
    ap.add_argument("--json", action="store_true", help="print the report as one JSON object")
    args = ap.parse_args()
    if args.minutes <= 0 or args.recover_every < 1:
        ap.error("--minutes must be positive and --recover-every at least 1")
    args.kinds = [kind for kind in (args.kinds or "").split(",") if kind]
    unknown = sorted(set(args.kinds) - set(FAULT_KINDS))
    if unknown:
        ap.error(f"--kinds: unknown {', '.join(unknown)} (the menu: {', '.join(FAULT_KINDS)})")
    return args


def rerun_command(args: argparse.Namespace, seed: int) -> str:
    parts = ["scripts/soak.py", "--minutes", f"{args.minutes:g}", "--seed", str(seed)]
    if args.sites != 6:
        parts += ["--sites", str(args.sites)]
    if (args.k, args.n) != (2, 4):
        parts += ["--k", str(args.k), "--n", str(args.n)]
    if args.kinds:
        parts += ["--kinds", ",".join(args.kinds)]
    return " ".join(parts)


def main() -> int:
    args = parse_args()
    seed = args.seed if args.seed is not None else secrets.randbelow(2**32)

    def say(text: str) -> None:
        print(text, file=sys.stderr if args.json else sys.stdout, flush=True)

    say(f"soak seed {seed} (rerun: {rerun_command(args, seed)})")
    signal.signal(signal.SIGTERM, _stop_on_term)
    root = args.root or Path(tempfile.mkdtemp(prefix="meshpacs-soak-"))
    started = time.monotonic()

    def progress(line: str) -> None:
        say(f"[{time.monotonic() - started:6.0f} s] {line}")

    try:
        report = run_soak(
            root,
            args.minutes,
            seed,
            sites=args.sites,
            k=args.k,
            n=args.n,
            progress=progress,
            kinds=args.kinds or None,
            recover_every=args.recover_every,
            heal_timeout=args.heal_timeout,
        )
    except KeyboardInterrupt:
        say(f"interrupted: every node stopped; seed {seed}; files kept under {root}")
        return 130
    except Exception as error:
        first = (str(error).splitlines() or [""])[0]  # not a node log's tail
        (root / "soak-error.txt").write_text(traceback.format_exc(), encoding="utf-8")
        say(f"soak error ({type(error).__name__}): {first}")
        say(f"seed {seed}; files kept under {root}; the traceback in {root / 'soak-error.txt'}")
        return 1
    if args.json:
        print(json.dumps({"command": rerun_command(args, seed), **report.to_json()}, indent=2))
    else:
        say(report.summary())
    if report.ok and args.root is None:
        shutil.rmtree(root, ignore_errors=True)
    elif not report.ok:
        say(f"files kept under {root} (node logs in {root / 'testbed' / 'logs'})")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
