"""Shared by every family: the one keep/drop verdict, text normalization, bundled assets, eval-set specs, temporary files, the numba cache."""
