"""Versioned Parquet datasets: content-addressed versions, atomic shards, manifest-last commits, layers, the catalog.

Importing the package wires the layer reader into ``datasets.read_table`` (layers builds on datasets, so datasets
never imports layers back: no import circle).
"""

from storage import datasets as _datasets
from storage import layers as _layers
from storage import pointers as _pointers

_datasets._WIDE_READER[:] = [_layers.read_table]
_datasets._LATEST[:] = [_pointers.latest]  # the dataset/stage pointers answer datasets.latest
