"""The on-disk artifact: file names and atomic writes, the typed manifest, and the memory-mapped
arrays, string tables and metadata columns it holds."""
