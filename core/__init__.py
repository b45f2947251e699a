"""SASRec with full-catalog softmax cross-entropy or Cut Cross-Entropy: data, model, losses, training."""
