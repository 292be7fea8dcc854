"""PyTorch policies (xLSTM, later Decision Transformer), their export-friendly step forms and trainers."""
