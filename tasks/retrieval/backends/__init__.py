"""One file per search backend behind base.py: dense, ANN, BM25."""
