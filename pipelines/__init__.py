"""Prefect flows of the pipeline: one module per DVC stage, the whole-pipeline flow and its
deployment. Each stage runs as ``python -m pipelines.<stage>``; importing does nothing."""
