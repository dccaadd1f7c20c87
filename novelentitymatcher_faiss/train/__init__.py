"""Retraining: SetFit fine-tuning, model2vec distillation and the classifier head, written as a
new artifact through the build path."""
