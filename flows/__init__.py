"""Prefect flows: each module is one flow that reads as its list of steps.

Prefect puts this folder on ``sys.path`` when a worker loads a flow file, so no module here may share its
name with a top-level package of the project (``ingest``, ``features``, ``models``, ...).
"""
