"""The mlx backend: mlx-lm's models with LoRA layers, a compiled training step, fusing."""
