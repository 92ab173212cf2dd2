"""Data sources and the input pipeline.

Every source is a grain random-access source (`__len__`, `__getitem__`) returning a *record*, a flat dict
(see `common.make_record`), so FreiHAND, the embedded synthetic set (same files as FreiHAND), InterHand2.6M,
image folders and TFDS builds all go through the same `pipeline.decode -> pipeline.crop -> batch` path.
"""
