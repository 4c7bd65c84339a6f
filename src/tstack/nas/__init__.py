"""Weight-sharing supernet for hardware-aware NAS (000 §IV; needs PyTorch): corpus, supernet, training, perplexity."""
