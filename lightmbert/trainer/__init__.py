"""trainer: the DeepSpeed ZeRO distiller (teacher inference + LightMBERT student updates).

(Built in the trainer issue; this package exists so the distribution layout is final.)
"""
