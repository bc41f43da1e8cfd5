"""Serving: models run on exported folders without Ray (``inference``) and the Ray Serve
application in front of them (``app``)."""
