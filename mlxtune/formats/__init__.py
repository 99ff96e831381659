"""File formats mlxtune reads and writes: safetensors, GGUF, mlx-lm adapters, PEFT adapters."""
