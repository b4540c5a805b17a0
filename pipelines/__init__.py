"""End-to-end flows (the four-step pipeline, ablations, the demo), installed as ``wsi_tools.pipelines``."""
