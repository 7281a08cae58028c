"""Demo data for examples, tests and benchmarks: synthetic shapes with captions, their gold, a small vocabulary.

`samples` draws the images and captions and writes WebDataset shards, `gold` writes COCO / grounding splits and
gold phrase tables, `vocab` writes a WordPiece vocabulary. Only `glipkit demo`
(engine/demo.py) uses it in the product.
"""
