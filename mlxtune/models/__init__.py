"""Models: what mlxtune knows of each model family (``families``), one file per family."""
