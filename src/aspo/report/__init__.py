"""Metrics files, TensorBoard, plots and the comparison report."""
