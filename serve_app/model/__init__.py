"""The models: HunyuanOCR's code (vision tower, text model), the version profiles and task table,
where checkpoints come from, the tiny test checkpoint, and the PP-OCR lite family."""
