"""Readers of the dense training table."""

from reagent_recsys.data.loaders import (
    ArrowLoader,
    DataError,
    LoaderOptions,
    PetastormLoader,
    TableLoader,
    TrainingBatch,
    make_loader,
    read_table_metadata,
)

__all__ = ["ArrowLoader", "DataError", "LoaderOptions", "PetastormLoader", "TableLoader", "TrainingBatch",
           "make_loader", "read_table_metadata"]
