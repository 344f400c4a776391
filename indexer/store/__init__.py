"""The index file: its names (``schema``), byte layout, checksums, writer, reader, manifest."""
