"""Tests of clozelm.training, one file per module."""
