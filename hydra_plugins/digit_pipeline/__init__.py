"""Registers the pipeline's OmegaConf resolvers (pipeline/lib/compose.py) when Hydra scans its plugins, as DVC's
`dvc exp run` does with the repository root on sys.path: its composition then writes params.yaml's `derived:`
exactly as `python -m pipeline.params` does. A namespace package (no hydra_plugins/__init__.py), as Hydra requires."""

from pipeline.lib.compose import register_resolvers

register_resolvers()
