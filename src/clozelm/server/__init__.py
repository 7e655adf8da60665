"""`clozelm serve`: a local page (fill with two models side by side, streamed generation, attention heads)
and the small JSON API it uses. See docs/api.md.

    from clozelm.server import make_server
    server = make_server({"default": model_a, "default-bert": model_b}, port=0)
    server.serve_forever()            # server.url is the page

Layout: http.py (the hardened HTTP layer, no models), workers.py (the worker pool and its deadlines),
fields.py (every request field's type and range), endpoints.py (the JSON API), limits.py, app.py (all of
it put together); the command, `clozelm serve`, is clozelm/cli/serve.py.
"""

from .app import Server, make_server
from .limits import Limits

__all__ = ["Limits", "Server", "make_server"]
