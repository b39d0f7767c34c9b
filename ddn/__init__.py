"""Discrete Distribution Networks: training, export and serving.

The subpackages live in the repository's top-level folders:
``ddn.training`` (training/), ``ddn.export`` (export/), ``ddn.serving`` (serving/).
"""
