"""Online attribution server (FastAPI). The query math it uses lives in ``indexer.attribution``."""
