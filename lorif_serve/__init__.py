"""lorif-serve: training-data attribution as a service.

The distribution installs one top-level package, ``lorif_serve``, with three parts:
``lorif_serve.indexer`` (offline: gradients → factors → curvature → HDF5 index),
``lorif_serve.server`` (online: the query server) and ``lorif_serve.client`` (the SDK,
httpx + pydantic only). Importing this package imports none of them.
"""

__version__ = "0.1.0"
