"""The build pipeline: plan, factor and curvature phases, journal, shards, crash points."""
