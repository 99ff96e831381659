"""Training data: records read from files, one class per format, chat rendering, batches, checks."""
