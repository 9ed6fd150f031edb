"""The common layer every stage uses: data and splits, the model zoo and user-model loading, metrics, the shared
fine-tuning loop, safe model files, atomic writes and the one config convention."""
