"""The demo corpus and the documents demo."""
