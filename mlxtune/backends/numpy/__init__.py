"""The numpy backend: a llama-layout forward and backward in numpy, its LoRA, KV-cache generation."""
