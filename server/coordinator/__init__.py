"""Coordinator for a sharded index: fan a query out to shard servers, merge exactly.

Each shard server serves one shard file (a complete index of a row range) and returns
its local top-k with global row numbers; the global top-k is contained in the union of
the local ones, so sorting the union by score is exact (docs/scale.md). A shard that fails makes
the answer a 503 naming it, or, with ``allow_partial``, a partial answer flagged in
``coverage``.

    python -m server.coordinator --shards http://10.0.0.1:8000 --shards http://10.0.0.2:8000
"""
