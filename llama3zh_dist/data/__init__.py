"""Data pipeline: sources, cleaning, the Llama 3 chat template, packing and Ray prep."""
