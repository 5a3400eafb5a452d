"""Planning from the data (nnU-Net's lesson): ``medmae plan`` reads a dataset's fingerprint and writes a complete
config, sized for a device and a time budget.

============  ===================================================================================
``fingerprint``  what ``data check`` reads, per case, plus CT foreground intensities
``rules``        target spacing, crop, stages, intensity preset, flips, label map: pure functions
``network``      candidate networks, their counted cost (FLOPs, memory), the device's measured speed
``search``       the crop / network / batch that fit memory and budget
``sections``     the pretraining and fine-tuning config sections of a choice
``plan``         :func:`make_plan`: fingerprint -> the plan mapping
``plan_file``    writing / reading plan files, their configs and the summary runs record
============  ===================================================================================
"""
