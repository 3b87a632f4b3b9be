"""From documents to vectors: the embedder (presets as data) and the incremental plan."""
