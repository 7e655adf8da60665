#!/usr/bin/env python3
"""Held-out modern prose for evaluation: the Wikipedia excerpt in gensim's test data, as plain text.

clozelm keeps this text out of all training and tuning; it serves for independent evaluation (bits per byte,
heads vs syntax) of the embedded models and of pretrained ones. The gensim wheel is fetched from PyPI (pinned)
and read as data: nothing is installed or imported from it.

    python scripts/wiki_heldout.py [--out data/heldout/wiki.txt] [--chars 40000]
"""

import argparse
import bz2
import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GENSIM = "gensim==4.4.0"
DUMP = "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
NS = "{http://www.mediawiki.org/xml/export-0.10/}"


def fetch_dump(cache: Path) -> Path:
    cache.mkdir(parents=True, exist_ok=True)
    wheels = sorted(cache.glob("gensim-*.whl"))
    if not wheels:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary", ":all:",
                        "-d", str(cache), GENSIM], check=True)
        wheels = sorted(cache.glob("gensim-*.whl"))
    with zipfile.ZipFile(wheels[-1]) as z:
        names = [n for n in z.namelist() if n.endswith("-shortened.bz2") and "enwiki" in n]
        out = cache / Path(names[0]).name
        out.write_bytes(z.read(names[0]))
    return out


def clean(t: str) -> str:
    for _ in range(3):
        t = re.sub(r"\{\{[^{}]*\}\}", "", t)
    t = re.sub(r"\{\|.*?\|\}", "", t, flags=re.S)
    t = re.sub(r"<ref[^>]*/>", "", t)
    t = re.sub(r"<ref.*?</ref>", "", t, flags=re.S)
    t = re.sub(r"<!--.*?-->", "", t, flags=re.S)
    t = re.sub(r"<[^>]+>", "", t)
    t = re.sub(r"\[\[(?:File|Image|Category):[^\]]*(?:\[\[[^\]]*\]\][^\]]*)*\]\]", "", t)
    t = re.sub(r"\[\[[^\]|]*\|([^\]]*)\]\]", r"\1", t)
    t = re.sub(r"\[\[([^\]]*)\]\]", r"\1", t)
    t = re.sub(r"\[https?://\S+ ([^\]]*)\]", r"\1", t)
    t = re.sub(r"\[https?://\S+\]", "", t)
    t = t.replace("'''", "").replace("''", "")
    t = re.sub(r"&nbsp;|&ndash;|&mdash;", " ", t)
    paras = [p.strip() for p in t.split("\n")]
    return "\n\n".join(p for p in paras if p and not p.startswith(("=", "*", "#", "|", "!", ":", ";", "{", "}"))
                       and len(p.split()) >= 20)


def articles(dump: Path) -> list[str]:
    out = []
    for _, el in ET.iterparse(bz2.open(dump), events=("end",)):
        if el.tag == NS + "page":
            text = el.findtext(f"{NS}revision/{NS}text") or ""
            if el.findtext(NS + "ns") == "0" and not text.lower().startswith("#redirect"):
                cleaned = clean(text)
                if len(cleaned) > 2000:
                    out.append(cleaned)
            el.clear()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "data" / "heldout" / "wiki.txt")
    ap.add_argument("--cache", type=Path, default=ROOT / "data" / "cache")
    ap.add_argument("--chars", type=int, default=40_000, help="about this many characters in all")
    ap.add_argument("--per-article", type=int, default=4_000, help="at most about this many characters of one article")
    args = ap.parse_args()
    kept, size = [], 0
    for a in articles(fetch_dump(args.cache)):
        if size >= args.chars:
            break
        paras, n = [], 0
        for p in a.split("\n\n"):  # whole paragraphs from the start of each article: many topics, not one
            if n >= args.per_article:
                break
            paras.append(p)
            n += len(p)
        kept.append("\n\n".join(paras))
        size += n
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n\n".join(kept) + "\n", encoding="utf-8")
    print(f"wrote {args.out}: {len(kept)} articles, {sum(map(len, kept)):,} characters")


if __name__ == "__main__":
    main()
