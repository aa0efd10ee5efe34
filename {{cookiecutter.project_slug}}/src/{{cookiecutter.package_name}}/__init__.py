"""A DVC pipeline of PyTorch stages tracked in MLflow: prepare, train, analyze, optimize, robustness, register."""
