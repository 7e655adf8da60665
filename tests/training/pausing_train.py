"""`python pausing_train.py STEP train ARGS...`: `clozelm train ARGS` through the public Python API, with a
callback that holds still after step STEP until the run is asked to stop (Ctrl-C, SIGTERM) or is killed, so a
test can act at a known step. It prints "paused at step STEP" when it gets there; exit statuses are those of
`clozelm train` (0 done, 2 error, 130 interrupted)."""

from __future__ import annotations

import sys
import time

from clozelm.cli import build_parser
from clozelm.errors import ClozelmError
from clozelm.training import train
from clozelm.cli.train import config_from_args, flag_names


def pause_at(step: int):
    def callback(trainer, record):
        if record["step"] == step:
            print(f"paused at step {step}", file=sys.stderr, flush=True)
            deadline = time.monotonic() + 600
            while trainer.stop_requested is None and time.monotonic() < deadline:
                time.sleep(0.02)
    return callback


def main() -> int:
    step, argv = int(sys.argv[1]), sys.argv[2:]
    args = build_parser().parse_args(argv)
    try:
        with flag_names():
            train(config_from_args(args), callbacks=[pause_at(step)])
    except ClozelmError as e:
        print(f"clozelm: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("clozelm: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
