"""Attention heads: what each head looks at, as data, pages, images and reports.

    model = clozelm.load("default")                                      # tasks take a loaded model
    maps = clozelm.heads.attention_map(model, "The cat sat on the mat.")   # or clozelm.attention_map(text, "default")
    maps.attentions[layer][head]      # [T, T] numpy float32, rows sum to 1
    maps.tokens, maps.words           # readable pieces; words grouping them
    maps.to_html("view.html")         # head view + model view, one self-contained file (also inline in Jupyter)
    clozelm.heads.head_roles(model).write("roles/")            # previous/next/sink/delimiter/broad/duplicate/induction
    clozelm.heads.syntax_analysis(model, text).to_markdown()   # heads vs dependency syntax (needs clozelm[syntax])
"""

from .extract import HeadMaps, attention_map, hide_sink_columns, word_level
from .roles import RoleReport, head_roles
from .syntax import SyntaxReport, syntax_analysis

__all__ = ["HeadMaps", "attention_map", "hide_sink_columns", "word_level", "RoleReport", "head_roles",
           "SyntaxReport", "syntax_analysis"]
