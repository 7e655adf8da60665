"""`clozelm eval`: one loaded model measured on the same tasks whatever it was trained for, so that causal,
fill-in-the-middle and masked models can be compared on one scale.

    from clozelm.eval import evaluate
    results = evaluate(model, ["held-out.txt"], tasks="ppl,pairs", seed=0)

Tasks: `ppl` (bits per byte; a true upper bound for masked models), `lastword` (LAMBADA), `cloze` (middle
words and tokens), `pairs` (minimal pairs), `probe` (a linear probe on frozen features). See each module.
"""

from .options import DEFAULT_TASKS, TASKS, EvalOptions
from .report import markdown, table, to_json
from .run import evaluate

__all__ = ["evaluate", "EvalOptions", "TASKS", "DEFAULT_TASKS", "table", "markdown", "to_json"]
