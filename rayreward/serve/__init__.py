"""Serving reward models on Ray Serve (``rayreward serve``).

``config`` (the ``serve:`` section) and ``requests`` (request bodies) are cheap;
``app`` imports Ray Serve and FastAPI, and ``engine`` torch and transformers.
"""
