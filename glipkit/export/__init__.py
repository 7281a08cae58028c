"""Converters from label tables to the formats other trainers read: COCO, YOLO (ultralytics), ODVG."""
