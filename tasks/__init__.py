"""The pipeline's steps as plain functions (load, chunk, embed, retrieve, generate, score) and its settings
(``config.py``). They import neither Prefect nor ``flows/``: every ``@task`` and ``@flow`` is in ``flows/``, which
wires these steps together, so each step can be called and tested on its own."""
