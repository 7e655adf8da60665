"""`clozelm serve`: a local page (fill with two models side by side, streamed generation, attention heads)
and the small JSON API it uses. See docs/api.md.

    from clozelm.server import make_server
    server = make_server({"default": model_a, "default-bert": model_b}, port=0)
    server.serve_forever()            # server.url is the page
"""

from .app import Limits, Server, make_server

__all__ = ["Limits", "Server", "make_server"]
