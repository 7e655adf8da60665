"""The JSON API of `clozelm serve` (docs/api.md).

Each endpoint reads its fields (declared in `request_fields`, checked by `fields.read_fields`), hands the
model work to the worker pool and answers. What a model can do and what an answer holds come from the
tasks themselves: `clozelm.cloze` (fill, its method, the parts of an answer), `clozelm.generation` (whether a
model can generate, the sampling checks, the stream) and `clozelm.heads`; nothing here restates them.
"""

from __future__ import annotations

import sys
import time
import traceback
from dataclasses import asdict
from typing import TYPE_CHECKING
from urllib.parse import parse_qs

from ..errors import ClozelmError
from ..loaded import model_label
from .fields import Field, Integer, Number, OneOf, Strings, Text, one_line, read_fields
from .http import HTTPError, JSONHandler
from .workers import Busy, Cancelled, Job

if TYPE_CHECKING:
    from .app import Server

GRACE = 0.5  # seconds a request thread waits past a job's deadline for the job to report its own timeout
# The heads view is one self-contained page (inline script, style and data) shown in a sandboxed iframe;
# it may not load or send anything.
HEADS_CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data: blob:; "
             "base-uri 'none'; form-action 'none'; frame-ancestors 'self'")
API_ROUTES = {
    "/api/models": {"GET": "api_models", "HEAD": "api_models"},
    "/api/fill": {"POST": "api_fill"},
    "/api/generate": {"POST": "api_generate"},
    "/api/tokenize": {"POST": "api_tokenize"},
    "/api/heads": {"GET": "api_heads", "POST": "api_heads"},
}
PUBLIC_LIMITS = ("max_body", "max_text", "max_top", "max_new_tokens", "timeout")


def request_fields(limits, models: dict) -> dict[str, dict[str, Field]]:
    """Every field of every endpoint, with its type, range and default: the whole of what a request may say."""
    names = tuple(models)
    text = Text(limits.max_text)
    model = OneOf(names)
    largest_vocabulary = max(m.config.vocab_size for m in models.values())
    return {
        "/api/fill": {"text": text, "top": Integer(5, 1, limits.max_top), "model": model},
        "/api/tokenize": {"text": text, "model": model},
        "/api/heads": {"text": Text(limits.max_text, nonblank="empty text: give a text to look at"), "model": model},
        "/api/generate": {
            "text": text, "model": model,
            "max_tokens": Integer(40, 1, limits.max_new_tokens),
            "temperature": Number(0.0, 0, 100),
            "top_k": Integer(0, 0, largest_vocabulary),
            "top_p": Number(1.0, 0, 1),
            "repetition_penalty": Number(1.0, 0, 100),
            "seed": Integer(None, 0, 2 ** 63 - 1),
            "stop": Strings(max_items=8, max_chars=100),
            "beams": Integer(1, 1, 8),
        },
    }


def model_info(name: str, model, compiled: bool = False) -> dict:
    """What /api/models says of one model; `compiled`: its generations decode through compiled steps."""
    from ..cloze import method_for
    from ..generation import can_generate
    cfg, tok = model.config, model.tokenizer
    return {"name": name, "label": model_label(name), "family": cfg.family, "method": method_for(model),
            "causal": cfg.causal, "can_generate": can_generate(model), "layers": cfg.n_layer, "heads": cfg.n_head,
            "width": cfg.n_embd, "positions": cfg.n_positions, "vocab_size": cfg.vocab_size,
            "parameters": model.num_parameters(), "tokenizer": None if tok is None else tok.kind,
            "compiled_steps": compiled}


def answer_json(answer, template) -> dict:
    """An answer as `clozelm fill --json` gives it, with `parts`: its text cut into known text and filled
    blanks (as the template renders it), for highlighting."""
    out = answer.to_dict()
    parts = template.parts(answer.blanks)
    if "".join(text for text, _ in parts) == answer.text:
        out["parts"] = [{"fill": text} if filled else {"text": text} for text, filled in parts]
    return out


class APIHandler(JSONHandler):
    routes = API_ROUTES
    server: "Server"

    # ------------------------------------------------------------------ helpers

    def _fields(self, path: str, data) -> dict:
        return read_fields(data, self.server.fields[path])

    def _names(self, requested: str | None) -> list[str]:
        """The served models a request asks for: the one named, or all of them."""
        return list(self.server.models) if requested is None else [requested]

    def _submit(self, work, stream: bool = False) -> Job:
        try:
            return self.server.pool.submit(work, self.server.limits.timeout, stream=stream)
        except Busy as busy:
            raise HTTPError(503, str(busy), {"Retry-After": str(busy.retry_after)}) from None

    def _run(self, work):
        """Run `work(job)` on a worker and wait for it, within the time limit."""
        job = self._submit(work)
        if not job.wait(GRACE):
            job.cancelled.set()
            raise HTTPError(504, self._late_message())
        if job.error is not None:
            raise self._answerable(job.error)
        return job.result

    def _answerable(self, error: BaseException) -> BaseException:
        """A job's error as the request thread raises it: Cancelled (a BaseException) becomes a 504."""
        if isinstance(error, Cancelled):
            late = str(error) == "time limit"
            return HTTPError(504, self._late_message() if late else f"the request was {error}")
        return error

    def _late_message(self) -> str:
        return (f"the model did not answer within the server's time limit of {self.server.limits.timeout:g} s "
                "(waiting included); try a shorter text, fewer answers or fewer tokens")

    # ------------------------------------------------------------------ endpoints

    def api_models(self, method, query):
        limits = asdict(self.server.limits)
        self._send_json(200, {"models": [model_info(n, m, self.server.compiles(n))
                                         for n, m in self.server.models.items()],
                              "limits": {k: limits[k] for k in PUBLIC_LIMITS}})

    def api_fill(self, method, query):
        from ..cloze import fill, method_for, parse
        f = self._fields("/api/fill", self._read_json())
        text, top, names = f["text"], f["top"], self._names(f["model"])
        template = parse(text)  # a text without blanks is the same error for every model: say it once
        models = self.server.models

        def work(job):
            results = []
            for name in names:
                started = time.monotonic()
                try:
                    answers = fill(text, models[name], top=top)
                except ClozelmError as error:
                    results.append({"model": name, "error": one_line(str(error))})
                    continue
                results.append({"model": name, "method": method_for(models[name]),
                                "seconds": round(time.monotonic() - started, 3),
                                "answers": [answer_json(a, template) for a in answers]})
            return results

        results = self._run(work)
        errors = [r["error"] for r in results if "error" in r]
        if len(errors) == len(results):
            message = errors[0] if len(set(errors)) == 1 else "; ".join(f"{r['model']}: {r['error']}" for r in results)
            raise HTTPError(400, message)
        self._send_json(200, {"text": text, "results": results})

    def api_tokenize(self, method, query):
        f = self._fields("/api/tokenize", self._read_json())
        text = f["text"]
        results = []
        for name in self._names(f["model"]):
            tok = self.server.models[name].tokenizer
            if tok is None:
                results.append({"model": name, "error": "this model has no tokenizer"})
                continue
            # Tokenizing is cheap and touches no model: it runs here, not on a worker.
            ids = tok.encode(text, specials=True)
            tokens = [{"id": i, "piece": tok.piece(i), "text": tok.token_bytes(i).decode("utf-8", "replace")}
                      for i in ids]
            results.append({"model": name, "count": len(ids), "tokens": tokens})
        self._send_json(200, {"text": text, "results": results})

    def api_heads(self, method, query):
        if method == "POST":
            data = self._read_json()
        else:
            try:
                fields = parse_qs(query, keep_blank_values=True, max_num_fields=8).items()
                # a blank text is an empty text (said so); any other blank parameter is one left out
                data = {key: values[0] for key, values in fields if values[0] or key == "text"}
            except ValueError:
                raise HTTPError(400, "too many parameters (this endpoint takes: model, text)") from None
            unknown = sorted(set(data) - set(self.server.fields["/api/heads"]))
            if unknown:
                raise HTTPError(400, f"unknown parameter {one_line(unknown[0], 40)!r} (this endpoint takes: model, text)")
        f = self._fields("/api/heads", data)
        text, names = f["text"], self._names(f["model"])
        try:
            from ..heads import attention_map
        except ImportError:
            raise HTTPError(501, "the attention heads view is not part of this install") from None
        models = self.server.models

        def work(job):
            maps = [attention_map(models[name], text, model_name=model_label(name)) for name in names]
            return maps[0].to_html(compare=maps[1] if len(maps) > 1 else None)

        page = self.server.heads_page((text, tuple(names)), lambda: self._run(work))
        self._send(200, page.encode("utf-8"), "text/html; charset=utf-8", {"Content-Security-Policy": HEADS_CSP})

    def api_generate(self, method, query):
        from ..generation import Sampling, can_generate, stream_text, unused_settings
        f = self._fields("/api/generate", self._read_json())
        models = self.server.models
        name = f["model"]
        if name is None:
            name = next((n for n, m in models.items() if can_generate(m)), None)
            if name is None:
                raise HTTPError(400, "none of this server's models can generate (they are bidirectional): use fill")
        elif not can_generate(models[name]):
            raise HTTPError(400, f"{name} cannot generate (it is not a causal language model with a lossless "
                                 "tokenizer): use fill")
        model, text, stop, beams = models[name], f["text"], f["stop"], f["beams"]
        sampling = Sampling(max_new_tokens=f["max_tokens"], temperature=f["temperature"], top_k=f["top_k"],
                            top_p=f["top_p"], repetition_penalty=f["repetition_penalty"], seed=f["seed"],
                            compile=beams == 1 and self.server.compiles(name))
        sampling.check()
        unused = unused_settings(sampling, beams)
        if unused is not None:  # refused, as the command line refuses it, rather than silently ignored
            why, names = unused
            raise HTTPError(400, f"{', '.join(names)}: " + ("beams > 1 searches for the most likely text and samples "
                                                            "nothing" if why == "beams" else "temperature 0 decodes "
                                                            "greedily and samples nothing"))

        def work(job):
            for piece in stream_text(model, text, sampling, stop=stop, beams=beams):
                job.emit("text", piece)

        job = self._submit(work, stream=True)
        started = time.monotonic()
        kind, value = job.next_event(GRACE)
        if kind == "late":
            job.cancelled.set()
            raise HTTPError(504, self._late_message())
        if kind == "end" and value is not None:
            raise self._answerable(value)  # failed before its first piece: a plain JSON error with its status
        self._start_stream("application/x-ndjson; charset=utf-8")
        try:
            self._write_line({"model": name})
            while kind == "text":
                self._write_line({"text": value})
                kind, value = job.next_event(GRACE)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            job.cancelled.set()  # nobody is reading: free the worker at its next forward pass
            raise
        done = {"done": True, "seconds": round(time.monotonic() - started, 3), "stopped": None}
        if kind == "late" or (isinstance(value, Cancelled) and str(value) == "time limit"):
            job.cancelled.set()
            done["stopped"] = "time limit"
        elif value is not None:
            known = isinstance(value, (ClozelmError, Cancelled))
            done = {"error": one_line(str(value) if known else f"internal error ({type(value).__name__})")}
            if not known:
                traceback.print_exception(value, file=sys.stderr)
        self._write_line(done)
        self._end_stream()
