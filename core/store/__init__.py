"""The activation store: backbone tokens of one layer, on disk, streamed without loading it all.

Split by job: :mod:`.format` (file names, manifest, identity, the manifest check),
:mod:`.writer` (:class:`StoreWriter`: create, resume, commit shards) and :mod:`.reader`
(:class:`ActivationStore`: validated random access and shuffled streaming).
"""

from saescope.core.store.format import (
    DTYPES,
    FORMAT,
    FORMAT_VERSION,
    IDENTITY_KEYS,
    MANIFEST,
    StoreError,
    check_dtype,
    identity,
    ids_file,
    new_manifest,
    read_manifest,
    shard_file,
)
from saescope.core.store.reader import ActivationStore, open_store
from saescope.core.store.writer import StoreWriter

__all__ = [
    "ActivationStore",
    "StoreWriter",
    "StoreError",
    "new_manifest",
    "identity",
    "open_store",
    "read_manifest",
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST",
    "DTYPES",
    "IDENTITY_KEYS",
    "check_dtype",
    "shard_file",
    "ids_file",
]
