"""Pictures: slide overviews (:mod:`~wsi_tools.viz.qc`) and the method's figures
(:mod:`~wsi_tools.viz.figures`). Each draws on its own Agg canvas, so importing
them changes no matplotlib state."""
