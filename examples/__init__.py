"""Runnable examples built on the indexer and server."""
