"""`clozelm study`: the question clozelm was founded on, "is left-to-right better than bidirectional?", answered
with numbers. One tokenizer, then every objective (clm, mlm, fim, hybrid, mdlm) trained at the same shape, token
budget and data order for K seeds, each model measured on the held-out split by every `clozelm eval` task, and
report.md / results.json / PNG plots saying, task by task, what the figures say about the claim.

    from clozelm.study import StudyConfig, run_study
    results = run_study(StudyConfig(corpus=["corpus/"], out="study", tokens=400_000, n_layer=2, n_embd=64))

    config.py   StudyConfig: every option, checked where it is made
    run.py      run_study: the study directory, resumable at every stage
    report.py   means and spreads over seeds, winners, the verdict on the claim; report.md
    plots.py    the PNG pictures
"""

from .config import StudyConfig
from .run import run_study

__all__ = ["StudyConfig", "run_study"]
