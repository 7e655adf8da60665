"""Tests of clozelm.eval, one file per task (and the command line)."""
