"""Tests of clozelm.heads, one file per module."""
