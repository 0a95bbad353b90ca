"""Offscreen snapshots of a segmentation (:mod:`cldl.render.snapshot`, VTK imported lazily) and their colours
(:mod:`cldl.render.palette`)."""
