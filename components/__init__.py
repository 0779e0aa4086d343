"""The five stages of the distillation pipeline, each importable and runnable without KFP."""
