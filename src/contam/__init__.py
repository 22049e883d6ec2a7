"""Contam: measure what generated training data does to vision models.

One module per stage of the workflow's DAG:

    index_real -> prompts -> fit_generator -> generate -> gather -> mix
    -> train -> evaluate -> report

plus shared helpers (config, io, seeds, resources, models, images, logs).
"""

__version__ = "0.1.0"
