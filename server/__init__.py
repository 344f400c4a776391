"""Online attribution server (FastAPI). Its query math is ``indexer.core.query``."""
