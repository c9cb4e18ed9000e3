"""Training code for the shipped models: data sets, training loops, evaluation."""
