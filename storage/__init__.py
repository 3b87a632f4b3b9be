"""Every file format ragbatch reads or writes, and where it lives on disk."""
