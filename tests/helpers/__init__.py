"""Helpers that several test modules share (test modules never import one another).

`pythonpath = ["tests"]` in pyproject.toml puts this package on the import path: `from helpers.streams import Stream`.
"""
