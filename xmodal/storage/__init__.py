"""On-disk storage: shards, catalog files, index folders."""
