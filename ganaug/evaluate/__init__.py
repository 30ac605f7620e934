"""Does the synthetic data help? Quality metrics of a generator and the augmentation study.

    ganaug evaluate metrics --model M.onnx --data digits --out DIR
    ganaug evaluate study --out DIR [--quick]

The modules, each with one job: `classifier` (the small CNN and classical augmentation),
`features` (the domain feature network behind FD/KID), `metrics` (FD, KID, precision/recall,
per-class FD, nearest neighbours), `live` (in-training metrics), `study` (the protocol),
`report` (markdown, JSON, figures) and `entry` (the command line). Nothing heavy is imported here.
"""
