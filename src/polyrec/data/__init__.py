"""Data: raw sources, processing fitted on the training split, encoded data sets, loaders and samplers.

The names here are the ones a run needs to build its data and record which data it saw; everything else
is imported from its module (``polyrec.data.dataset``, ``polyrec.data.sources``, ...).
"""

from .dataset import EncodedDataset, build_dataset, data_fingerprint, new_domain_dataset, source_files

__all__ = ["EncodedDataset", "build_dataset", "data_fingerprint", "new_domain_dataset", "source_files"]
