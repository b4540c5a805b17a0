"""Generated data for tests, benchmarks and the demo: synthetic Aperio SVS slides
(:mod:`~wsi_tools.testing.synth`), the synthetic lymphatic-invasion cohort of the demo
(:mod:`~wsi_tools.testing.cohort`) and tiny separable patch stores
(:mod:`~wsi_tools.testing.toy`). Nothing here is used on real data."""
