"""Every reader of user files: documents (load.py, loaders/), question files, and chunking."""
