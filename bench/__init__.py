"""DP normalisation benchmark: suites, data, backbones, DP training, runs, records, reports."""
