"""Object detection with set prediction (DETR, Carion et al. 2020): boxes and GIoU, the Hungarian
matcher, the set loss, and COCO metrics through the COCO evaluator."""
