"""The search service: ``tomeray serve`` (FastAPI on uvicorn, or on Ray Serve for scale-out), a JSON
API and a web page over one or more video indexes. See :mod:`.app` for the routes."""
