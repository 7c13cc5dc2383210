"""The model repository's templates: ``config.pbtxt`` and ``1/model.py`` per model (tokenizer ->
engine -> postprocess, and the ensemble that chains them), filled by ``rerank-build repository``.

This file makes the folder the package ``rerank_build.templates`` (pyproject.toml maps it there), so
that the templates ship as package data and a non-editable install assembles a repository too. It is
not copied into a built repository.
"""
