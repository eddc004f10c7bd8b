"""Fine-tuning: data, the DeepSpeed loop, checkpoints and resume, evaluation, LoRA merge and export."""
