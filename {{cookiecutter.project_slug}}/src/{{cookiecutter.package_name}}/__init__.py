"""{{ cookiecutter.project_name }}: a DVC pipeline of PyTorch stages tracked in MLflow. Stages: prepare, train."""
