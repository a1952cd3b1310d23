"""Per-document signals: RedPajama-V2 quality signals and their kernels, datatrove's filter reasons, language id, quality classifiers."""
